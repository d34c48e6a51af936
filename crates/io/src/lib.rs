//! cryoden-io

//! cryoden-nn

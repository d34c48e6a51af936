//! cryoden-infer

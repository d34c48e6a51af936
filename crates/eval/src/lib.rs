//! cryoden-eval

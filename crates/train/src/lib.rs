//! cryoden-train

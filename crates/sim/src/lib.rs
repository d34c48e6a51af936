//! cryoden-sim

//! cryoden-cuda

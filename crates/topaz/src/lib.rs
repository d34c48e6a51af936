//! cryoden-topaz

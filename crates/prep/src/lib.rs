//! cryoden-prep

//! cryoden-sim: physically based simulation of counted cryo-EM movies with their noise-free truth.
//!
//! atoms (PDB/mmCIF) → projected Coulomb potential (Peng 1996 scattering factors, B-factor, displaced solvent)
//! → vitreous ice → weak-phase contrast through the CTF (defocus, astigmatism, Cs, amplitude contrast, envelope)
//! and detector MTF → dose per frame, exposure-dependent decay and drift → Poisson counts per frame.
//! docs/SIMULATION.md states every approximation.
//!
//! API: [`SimConfig`] (every parameter, `Default` = typical conditions), [`Structure`] (`apoferritin()` built in,
//! or `from_file`), [`Simulator::new`]`(cfg, &structure)` then `simulate_micrograph(i)` (frames + truth + metadata
//! in memory) or `simulate_streaming(i, |k, counts| ...)` (one frame at a time); [`write_dataset`] writes a whole
//! data set (`movies/`, `truth/`, `simulation.json`).
//! Same seed → bit-identical output whatever the number of threads.

pub mod error;
pub mod fft;
pub mod ice;
pub mod optics;
pub mod projection;
pub mod rng;
pub mod scattering;
pub mod simulate;
pub mod structure;

pub use error::{Result, SimError};
pub use optics::Ctf;
pub use simulate::{
    micrograph_name, movie_path, truth_path, write_dataset, Micrograph, MicrographMeta, Particle,
    Progress, SimConfig, Simulator,
};
pub use structure::{Format, Structure};

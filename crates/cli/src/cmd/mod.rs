//! One module per subcommand.

pub mod info;
pub mod bench;
pub mod train;
pub mod import_topaz;
pub mod doctor;
pub mod simulate;
pub mod denoise;
pub mod evaluate;
pub mod demo;
pub mod split;
pub mod prepare;

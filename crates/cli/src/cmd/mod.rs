//! One module per subcommand.

pub mod bench;
pub mod demo;
pub mod denoise;
pub mod doctor;
pub mod evaluate;
pub mod import_topaz;
pub mod info;
pub mod prepare;
pub mod simulate;
pub mod split;
pub mod train;

//! Fuzz the MRC header parser and everything a header steers (layout checks, gzip, extended headers, decoding):
//! any input must give data or a typed error — no panic, no allocation beyond what the input holds.
#![no_main]

use cryoden_io::{MrcStack, ReadOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    cryoden_io_fuzz_check(data);
});

fn cryoden_io_fuzz_check(data: &[u8]) {
    for opts in [ReadOptions::strict(), ReadOptions::permissive()] {
        if let Ok(s) = MrcStack::from_bytes("fuzz.mrc", data.to_vec(), opts) {
            let _ = s.validate();
            let _ = s.fei_sections();
            if s.nz() > 0 {
                let _ = s.read_image(s.nz() - 1);
            }
            let _ = s.read_all();
        }
    }
}

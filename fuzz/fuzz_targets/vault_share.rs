#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| certdrop::fuzz_entry::vault_share(data));

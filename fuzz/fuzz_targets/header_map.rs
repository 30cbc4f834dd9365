#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis_fuzz::header_map(data));

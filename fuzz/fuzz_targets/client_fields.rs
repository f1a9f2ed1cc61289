#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cadenza_fuzz::client_fields(data));

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    cadenza_fuzz::h3_control(data);
});

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cadenza_fuzz::h3_request(data);
});

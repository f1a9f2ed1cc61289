#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = cadenza_fuzz::proxy_header(data);
});

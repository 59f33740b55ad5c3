#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| control_api::fuzzing::http_origin(data));

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| control_api::fuzzing::relay_wire(data));

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| envbox::fuzzing::www_authenticate(data));

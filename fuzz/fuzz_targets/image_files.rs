#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| envbox::fuzzing::image_files(data));

#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| quantkit_cli::fuzzing::run("ct_nvfp4", data));

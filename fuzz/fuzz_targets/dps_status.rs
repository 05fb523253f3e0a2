#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| lmp_device_register_fuzz::dps_status(data));

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(lmp_device_register::run(
        std::env::args_os(),
        lmp_device_register::config::Environment::capture(),
    ))
}

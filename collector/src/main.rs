//! `shoal-collector`: see [`shoal_collector::daemon`].

fn main() -> std::process::ExitCode {
    shoal_collector::daemon::run(std::env::args_os())
}

//! The in-container wrapper, bind-mounted over `dnsmasq`, `haproxy`,
//! `keepalived`, `radvd` and their `<kind>-kill` scripts. See
//! `sidespawn::agent::wrapper`.
//!
//! It runs on every request Neutron makes, so it skips Rust's usual start-up
//! (reading /proc/self/maps for the stack guard, the stack-overflow handler,
//! SIGPIPE setup): about a fifth of its run time, measured by
//! `cargo bench --bench wrapper`. What is lost is the "stack overflow"
//! message (a plain SIGSEGV instead) and SIGPIPE being ignored (the wrapper
//! writes only to stderr, and only on failure). glibc still hands std the
//! arguments, so `std::env::args_os` works as usual.
// Under `cargo test` the harness supplies its own main.
#![cfg_attr(not(test), no_main)]

#[cfg(not(test))]
// SAFETY: `no_main` leaves no other C `main` in the link, so exporting this one is the only
// definition of the symbol, and its signature is the one the C runtime calls.
#[unsafe(no_mangle)]
pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // The entry helper of docker sidecars answers to its own argv[0] only.
    if argv.first().is_some_and(|a| {
        std::path::Path::new(a).file_name() == Some(sidespawn::sidecar::netns_exec::NAME.as_ref())
    }) {
        return sidespawn::sidecar::netns_exec::run(argv);
    }
    sidespawn::agent::wrapper::run(argv)
}

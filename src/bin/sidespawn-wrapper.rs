//! The in-container wrapper, bind-mounted over `dnsmasq`, `haproxy`,
//! `keepalived`, `radvd` and their `<kind>-kill` scripts. See
//! `sidespawn::wrapper`.

fn main() {
    std::process::exit(sidespawn::wrapper::run(std::env::args_os().collect()));
}

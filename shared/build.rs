//! Rebuilds this crate when a migration is added or changed: `sqlx::migrate!` embeds the
//! `migrations/` directory at compile time, but on stable Rust cargo does not know the macro
//! read it, so a new migration file alone would leave binaries with the old set (what
//! `sqlx migrate build-script` generates).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}

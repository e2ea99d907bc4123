//! Makes the build number and commit always available to `env!`, defaulting to
//! `dev` and `unknown` outside the Nix build (which sets HUBBUB_BUILD/HUBBUB_COMMIT).

fn main() {
    for (name, fallback) in [("HUBBUB_BUILD", "dev"), ("HUBBUB_COMMIT", "unknown")] {
        println!("cargo::rerun-if-env-changed={name}");
        let value = std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| fallback.to_owned());
        println!("cargo::rustc-env={name}={value}");
    }
}

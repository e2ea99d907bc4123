//! `alejandra [--check] [--quiet] [PATH...]`: formats `.nix` files in place, or with
//! `--check` lists the ones that are not formatted and exits 2. Directories are
//! walked for `*.nix`; no PATH means the current directory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use alejandra::format::{Status, in_memory};

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.path());
        for entry in entries {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') || name == "target" {
                continue;
            }
            collect(&entry.path(), out)?;
        }
    } else if path.extension().is_some_and(|e| e == "nix") {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut check = false;
    let mut quiet = false;
    let mut roots = Vec::new();
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--check" | "-c" => check = true,
            "--quiet" | "-q" => quiet = true,
            _ => roots.push(PathBuf::from(arg)),
        }
    }
    // `nix fmt` without arguments passes none (newer Nix) or `.` (older Nix).
    if roots.is_empty() {
        roots.push(PathBuf::from("."));
    }
    let mut files = Vec::new();
    for root in &roots {
        if let Err(error) = collect(root, &mut files) {
            eprintln!("{}: {error}", root.display());
            return ExitCode::from(1);
        }
    }
    let (mut unformatted, mut failed) = (0, 0);
    for file in &files {
        let before = match std::fs::read_to_string(file) {
            Ok(text) => text,
            Err(error) => {
                eprintln!("{}: {error}", file.display());
                failed += 1;
                continue;
            }
        };
        match in_memory(file.display().to_string(), before) {
            (Status::Error(error), _) => {
                eprintln!("{}: {error}", file.display());
                failed += 1;
            }
            (Status::Changed(false), _) => {}
            (Status::Changed(true), after) => {
                unformatted += 1;
                if check {
                    eprintln!("not formatted: {}", file.display());
                } else if let Err(error) = std::fs::write(file, after) {
                    eprintln!("{}: {error}", file.display());
                    failed += 1;
                } else if !quiet {
                    eprintln!("formatted: {}", file.display());
                }
            }
        }
    }
    if !quiet {
        eprintln!("{} files checked, {unformatted} needed formatting", files.len());
    }
    if failed > 0 {
        ExitCode::from(1)
    } else if check && unformatted > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

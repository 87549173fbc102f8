//! Man pages and shell completions generated from the command line itself
//! (`straw man DIR`, `straw completions SHELL`; hidden, used by
//! `scripts/package`), so they never drift from `--help`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
pub use clap_complete::Shell;

/// Writes `straw.1` and one page per visible subcommand (`straw-server.1`,
/// ...) into `dir`, creating it. Returns the man pages now in `dir`, sorted.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))?;
    man_files(dir)
}

fn man_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    files.sort();
    Ok(files)
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(mut cmd: clap::Command, shell: Shell, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, &mut cmd, name, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, Command};

    fn cli() -> Command {
        Command::new("straw")
            .about("a split proxy")
            .version("1.2.3")
            .subcommand(
                Command::new("server")
                    .about("Run the server")
                    .arg(Arg::new("config").long("config")),
            )
            .subcommand(Command::new("secret").hide(true))
    }

    #[test]
    fn man_pages_cover_visible_subcommands_only() {
        let dir = std::env::temp_dir().join(format!("straw-man-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = write_man_pages(cli(), &dir).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["straw-server.1", "straw.1"]);
        let server = std::fs::read_to_string(dir.join("straw-server.1")).unwrap();
        assert!(server.starts_with(".ie"), "roff: {server:.80}");
        assert!(server.contains("config"), "{server}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn completions_name_the_subcommands() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut out = Vec::new();
            write_completions(cli(), shell, &mut out);
            let text = String::from_utf8(out).unwrap();
            assert!(text.contains("server"), "{shell}: {text:.200}");
            assert!(text.contains("config"), "{shell}");
        }
    }
}

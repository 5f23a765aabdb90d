//! What a package installs beside a binary, generated from its command line so it never
//! drifts from it: man pages (the command and each subcommand, `clap_mangen`) and bash, zsh
//! and fish completions (`clap_complete`). Both binaries write theirs with a hidden command
//! the package build runs (`contrib/deb/build.sh`).

use std::path::Path;

use clap_complete::Shell;

/// Writes `DIR/man/NAME*.1` and `DIR/completions/{NAME.bash,_NAME,NAME.fish}` for `cmd`.
pub fn write(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let name = cmd.get_name().to_owned();
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, &name, &completions)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn man_pages_and_completions_for_every_subcommand() {
        let cmd = clap::Command::new("demo")
            .about("a demo")
            .subcommand(clap::Command::new("run").about("runs"))
            .arg(clap::Arg::new("config").long("config"));
        let dir = tempfile::tempdir().expect("tempdir");
        super::write(cmd, dir.path()).expect("written");
        for file in [
            "man/demo.1",
            "man/demo-run.1",
            "completions/demo.bash",
            "completions/_demo",
            "completions/demo.fish",
        ] {
            let text = std::fs::read_to_string(dir.path().join(file)).expect(file);
            assert!(text.contains("demo"), "{file}: {text}");
        }
        let man = std::fs::read_to_string(dir.path().join("man/demo.1")).expect("man");
        assert!(
            man.starts_with(".ie") || man.contains(".TH demo 1"),
            "{man}"
        );
    }
}

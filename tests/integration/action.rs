//! The GitHub Action's install step (`.github/action/install.sh`) on this
//! machine, in a simulated runner: `RUNNER_OS`, `RUNNER_ARCH`, a tool cache,
//! a `GITHUB_PATH` file, and a release served from a local folder through a
//! `file://` URL, laid out as the release workflow names its assets.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{BIN, repo_path};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const TARGET: &str = "x86_64-unknown-linux-musl";

/// A runner's folders and a release of this build's binary beside them.
struct Runner {
    root: tempfile::TempDir,
}

impl Runner {
    /// A release whose binary is a two-line stand-in: most tests are about
    /// the archive and its checksum, not the 150 MB debug binary inside.
    fn new() -> Runner {
        let stand_in = format!("#!/bin/sh\necho tcpscript {VERSION} stand-in\n");
        Runner::with_binary(stand_in.as_bytes())
    }

    fn with_binary(binary: &[u8]) -> Runner {
        let runner = Runner {
            root: tempfile::tempdir().unwrap(),
        };
        for dir in ["tool-cache", "temp", "bin"] {
            fs::create_dir(runner.path(dir)).unwrap();
        }
        fs::write(runner.path("github_path"), "").unwrap();
        fs::write(runner.path("github_output"), "").unwrap();
        runner.publish(binary);
        runner
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.root.path().join(relative)
    }

    fn archive(&self) -> PathBuf {
        self.path(&format!(
            "releases/v{VERSION}/tcpscript-{VERSION}-{TARGET}.tar.gz"
        ))
    }

    /// `tcpscript-VERSION-TARGET.tar.gz` holding
    /// `tcpscript-VERSION-TARGET/tcpscript`, and its `.sha256`, as
    /// .github/workflows/release.yml writes them.
    fn publish(&self, binary: &[u8]) {
        let folder = format!("tcpscript-{VERSION}-{TARGET}");
        let staging = self.path("staging").join(&folder);
        fs::create_dir_all(&staging).unwrap();
        let exe = staging.join("tcpscript");
        fs::write(&exe, binary).unwrap();
        // The archive keeps the mode: executable, as the release's is.
        let chmod = Command::new("chmod").arg("+x").arg(&exe).status().unwrap();
        assert!(chmod.success());
        let archive = self.archive();
        fs::create_dir_all(archive.parent().unwrap()).unwrap();
        let tar = Command::new("tar")
            .arg("-czf")
            .arg(&archive)
            .arg("-C")
            .arg(self.path("staging"))
            .arg(&folder)
            .status()
            .unwrap();
        assert!(tar.success(), "tar");
        let sum = Command::new("sha256sum")
            .arg(archive.file_name().unwrap())
            .current_dir(archive.parent().unwrap())
            .output()
            .unwrap();
        assert!(sum.status.success(), "sha256sum");
        fs::write(sha256_file(&archive), sum.stdout).unwrap();
    }

    /// `install.sh STEP` with the runner's environment around it.
    fn run(&self, step: &str, env: &[(&str, &str)]) -> Output {
        let mut command = Command::new("bash");
        command
            .arg(repo_path(".github/action/install.sh"))
            .arg(step)
            .env("TCPSCRIPT_VERSION", VERSION)
            .env("TCPSCRIPT_REPOSITORY", "tcpscript/tcpscript")
            .env(
                "TCPSCRIPT_BASE_URL",
                format!("file://{}", self.path("releases").display()),
            )
            .env("RUNNER_OS", "Linux")
            .env("RUNNER_ARCH", "X64")
            .env("RUNNER_TOOL_CACHE", self.path("tool-cache"))
            .env("RUNNER_TEMP", self.path("temp"))
            .env("GITHUB_PATH", self.path("github_path"))
            .env("GITHUB_OUTPUT", self.path("github_output"));
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().unwrap()
    }

    fn installed_dir(&self) -> PathBuf {
        self.path(&format!("tool-cache/tcpscript/{VERSION}/X64"))
    }

    fn github_path(&self) -> String {
        fs::read_to_string(self.path("github_path")).unwrap()
    }
}

fn sha256_file(archive: &Path) -> PathBuf {
    let mut name = archive.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_ok(output: &Output) {
    assert!(
        output.status.success(),
        "install.sh failed: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

#[test]
fn install_puts_the_verified_binary_on_github_path() {
    let runner = Runner::with_binary(&fs::read(BIN).unwrap());
    let output = runner.run("install", &[]);
    assert_ok(&output);
    let bin = runner.installed_dir().join("bin");
    assert_eq!(runner.github_path(), format!("{}\n", bin.display()));
    assert!(text(&output.stdout).contains("verified"));

    // Found the way a later step finds it: on PATH, by name.
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let version = Command::new("tcpscript")
        .arg("--version")
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(version.status.success());
    assert!(
        text(&version.stdout).starts_with(&format!("tcpscript {VERSION}")),
        "{}",
        text(&version.stdout)
    );
}

#[test]
fn a_checksum_mismatch_fails_and_installs_nothing() {
    let runner = Runner::new();
    // The archive changes after its checksum was published: one byte more.
    let mut bytes = fs::read(runner.archive()).unwrap();
    bytes.push(0);
    fs::write(runner.archive(), bytes).unwrap();

    let output = runner.run("install", &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stderr));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "checksum mismatch for tcpscript-{VERSION}-{TARGET}.tar.gz: expected "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("not installing it"), "{stderr}");
    // The step is annotated, too.
    assert!(text(&output.stdout).contains("::error title=tcpscript install::checksum mismatch"));
    assert_eq!(runner.github_path(), "");
    assert!(!runner.installed_dir().join("bin/tcpscript").exists());
}

#[test]
fn a_checksum_file_without_a_hash_fails() {
    let runner = Runner::new();
    fs::write(sha256_file(&runner.archive()), "Not Found\n").unwrap();
    let output = runner.run("install", &[]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("holds no SHA-256"));
    assert_eq!(runner.github_path(), "");
}

#[test]
fn a_missing_archive_fails_with_its_url() {
    let runner = Runner::new();
    let output = runner.run("install", &[("TCPSCRIPT_VERSION", "v9.9.9")]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "cannot download file://{}/v9.9.9/tcpscript-9.9.9-{TARGET}.tar.gz",
            runner.path("releases").display()
        )),
        "{stderr}"
    );
}

#[test]
fn a_second_install_uses_the_tool_cache() {
    let runner = Runner::new();
    assert_ok(&runner.run("install", &[]));
    // Gone from the release: only the cache can provide it now.
    fs::remove_file(runner.archive()).unwrap();
    let output = runner.run("install", &[]);
    assert_ok(&output);
    assert!(text(&output.stdout).contains("cached in"));
}

#[test]
fn resolve_writes_the_step_outputs() {
    let runner = Runner::new();
    assert_ok(&runner.run("resolve", &[("TCPSCRIPT_VERSION", &format!("v{VERSION}"))]));
    let outputs = fs::read_to_string(runner.path("github_output")).unwrap();
    assert_eq!(
        outputs,
        format!(
            "version={VERSION}\ntarget={TARGET}\ndir={}\n",
            runner.installed_dir().display()
        )
    );
}

#[test]
fn a_version_that_is_not_one_fails() {
    let runner = Runner::new();
    let output = runner.run("resolve", &[("TCPSCRIPT_VERSION", "main")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        text(&output.stderr).contains("version must be latest or X.Y.Z"),
        "{}",
        text(&output.stderr)
    );
}

/// A runner without an archive (FreeBSD here) builds the release from the
/// repository with `cargo install --locked`; a stand-in `cargo` records how
/// it was called and "installs" a script.
#[test]
fn no_archive_for_the_runner_falls_back_to_cargo_install() {
    let runner = Runner::new();
    let cargo = runner.path("bin/cargo");
    fs::write(
        &cargo,
        format!(
            "#!/bin/sh\necho \"$@\" > {calls}\n\
             while [ \"$1\" != --root ]; do shift; done\n\
             mkdir -p \"$2/bin\"\n\
             printf '#!/bin/sh\\necho tcpscript {VERSION}\\n' > \"$2/bin/tcpscript\"\n\
             chmod +x \"$2/bin/tcpscript\"\n",
            calls = runner.path("cargo-calls").display()
        ),
    )
    .unwrap();
    let chmod = Command::new("chmod")
        .arg("+x")
        .arg(&cargo)
        .status()
        .unwrap();
    assert!(chmod.success());
    let path = format!(
        "{}:{}",
        runner.path("bin").display(),
        std::env::var("PATH").unwrap()
    );
    let output = runner.run(
        "install",
        &[
            ("RUNNER_OS", "FreeBSD"),
            ("PATH", &path),
            ("GITHUB_SERVER_URL", "https://github.example"),
        ],
    );
    assert_ok(&output);
    let dir = runner.installed_dir();
    assert_eq!(
        fs::read_to_string(runner.path("cargo-calls")).unwrap(),
        format!(
            "install --locked --git https://github.example/tcpscript/tcpscript --tag v{VERSION} --root {} tcpscript\n",
            dir.display()
        )
    );
    assert_eq!(
        runner.github_path(),
        format!("{}\n", dir.join("bin").display())
    );
}

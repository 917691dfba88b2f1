//! `dm vectors verify [DIR]` and `dm vectors generate DIR [--force]`.

use anyhow::Context as _;
use dm_vectors::Written;

use crate::cli::VectorsCommand;

/// Runs a `dm vectors` subcommand.
pub fn run(command: VectorsCommand) -> anyhow::Result<()> {
    match command {
        VectorsCommand::Verify { dir } => {
            let report = dm_vectors::verify_dir(&dir).with_context(|| {
                format!(
                    "cannot read the vector directory {} (run from the repository root, or pass DIR)",
                    dir.display()
                )
            })?;
            for file in &report.files {
                outln!(
                    "{}: {} passed, {} failed",
                    file.path.display(),
                    file.passed(),
                    file.failed()
                );
                if let Some(e) = &file.file_error {
                    outln!("  FAILED (file): {e}");
                }
                for case in file.results.iter().filter(|r| r.failure.is_some()) {
                    outln!(
                        "  FAILED {} {}: {}",
                        case.kind,
                        case.name,
                        case.failure.as_deref().unwrap_or_default()
                    );
                }
            }
            for missing in &report.missing {
                outln!("MISSING {missing}.json");
            }
            outln!("{} passed, {} failed", report.passed(), report.failed());
            if report.ok() {
                Ok(())
            } else {
                anyhow::bail!("the test vectors in {} do not all pass", dir.display())
            }
        }
        VectorsCommand::Generate { dir, force } => {
            for (path, state) in dm_vectors::write_all(&dir, force)? {
                let what = match state {
                    Written::Created => "created",
                    Written::Unchanged => "unchanged",
                    Written::Replaced => "replaced",
                };
                outln!("{}: {what}", path.display());
            }
            Ok(())
        }
    }
}

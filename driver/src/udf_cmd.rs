//! `ignis udf new | build | upload | list`: the user's side of Wasm UDFs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use ignis_driver::udfs::{LOCAL_TENANT, RegisteredUdf, UdfRegistry};

use crate::client::Client;

#[derive(clap::Subcommand)]
pub enum UdfCommand {
    /// Create a UDF crate (Rust, built with the ignis-udf SDK) in DIR.
    New {
        dir: PathBuf,
        /// Path to the ignis-udf SDK (default: this Ignis checkout's udf-sdk/, else the git repository).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Build the UDF crate in DIR into a WebAssembly component (cargo build --target wasm32-wasip2 --release).
    Build { dir: PathBuf },
    /// Upload a component (a .wasm file, or a UDF crate, built first) to a driver, or register it locally.
    Upload {
        /// A .wasm component or a UDF crate directory.
        path: PathBuf,
        /// The name jobs use for it (default: the crate's or the file's name).
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Remove an uploaded component's name, so its functions can be defined again.
    Remove {
        name: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// List the uploaded components and their functions.
    List {
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

/// Where components go: a driver, or the local registry `ignis run` uses.
#[derive(clap::Args)]
pub struct RegistryArgs {
    /// The driver; without it, the local registry.
    #[arg(long, env = "IGNIS_DRIVER")]
    driver: Option<String>,
    /// Your API key (with --driver).
    #[arg(long, env = "IGNIS_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The local registry (without --driver): a directory or object store URL.
    #[arg(long, env = "IGNIS_UDF_ROOT")]
    udf_root: Option<String>,
}

pub async fn run(command: UdfCommand) -> anyhow::Result<()> {
    match command {
        UdfCommand::New { dir, sdk } => new_crate(&dir, sdk),
        UdfCommand::Build { dir } => {
            let wasm = build(&dir)?;
            println!("{}", wasm.display());
            Ok(())
        }
        UdfCommand::Upload { path, name, registry: RegistryArgs { driver, api_key, udf_root } } => {
            let (wasm, default_name) = if path.is_dir() {
                (build(&path)?, crate_name(&path)?)
            } else {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                (path.clone(), stem)
            };
            let name = name.unwrap_or(default_name);
            let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
            let registered = match driver {
                Some(driver) => Client::new(&driver, api_key)?.upload_udf(&name, bytes).await?,
                None => local_registry(udf_root)?.upload(LOCAL_TENANT, &name, bytes.into()).await?,
            };
            println!("uploaded {} ({})", registered.name, registered.digest);
            print_functions(&registered);
            Ok(())
        }
        UdfCommand::Remove { name, registry: RegistryArgs { driver, api_key, udf_root } } => {
            let removed = match driver {
                Some(driver) => Client::new(&driver, api_key)?.remove_udf(&name).await?,
                None => local_registry(udf_root)?
                    .remove(LOCAL_TENANT, &name)
                    .await?
                    .with_context(|| format!("no component named {name:?} was uploaded (see `ignis udf list`)"))?,
            };
            println!("removed {} ({})", removed.name, removed.digest);
            Ok(())
        }
        UdfCommand::List { registry: RegistryArgs { driver, api_key, udf_root } } => {
            let udfs = match driver {
                Some(driver) => Client::new(&driver, api_key)?.list_udfs().await?,
                None => local_registry(udf_root)?.list(LOCAL_TENANT).await?,
            };
            if udfs.is_empty() {
                println!("no UDF components uploaded");
            }
            for udf in &udfs {
                println!("{} ({}, {} bytes)", udf.name, udf.digest, udf.bytes);
                print_functions(udf);
            }
            Ok(())
        }
    }
}

fn local_registry(udf_root: Option<String>) -> anyhow::Result<UdfRegistry> {
    let root = match udf_root {
        Some(root) => ignis_core::job::resolve_location(&root, &std::env::current_dir()?)?,
        None => ignis_driver::default_udf_root(),
    };
    Ok(UdfRegistry::new(root, ignis_core::store::runtime_env()))
}

fn print_functions(udf: &RegisteredUdf) {
    for f in &udf.functions {
        let returns = f.returns.as_deref().map(|r| format!(" -> {r}")).unwrap_or_default();
        println!("  {} {}({}){returns}  {}", f.kind, f.name, f.arguments.join(", "), f.description);
    }
}

fn crate_name(dir: &Path) -> anyhow::Result<String> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let doc: toml::Table = text.parse().with_context(|| format!("parsing {}", manifest.display()))?;
    doc.get("package")
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .map(str::to_owned)
        .with_context(|| format!("{} has no [package] name", manifest.display()))
}

/// Build the crate for wasm32-wasip2 and return the component's path, as cargo reports it.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    let manifest = dir.join("Cargo.toml");
    if !manifest.exists() {
        bail!("{} is not a UDF crate: it has no Cargo.toml (create one with `ignis udf new`)", dir.display());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-wasip2", "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(&manifest)
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !output.status.success() {
        bail!("cargo build of {} failed (is the target installed? `rustup target add wasm32-wasip2`)", dir.display());
    }
    let mut wasm = None;
    for line in output.stdout.split(|b| *b == b'\n') {
        let Ok(message) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        if message["reason"] == "compiler-artifact"
            && let Some(files) = message["filenames"].as_array()
        {
            for file in files.iter().filter_map(|f| f.as_str()) {
                if file.ends_with(".wasm") {
                    wasm = Some(PathBuf::from(file));
                }
            }
        }
    }
    wasm.with_context(|| {
        format!("cargo built no .wasm for {}; a UDF crate needs `crate-type = [\"cdylib\"]`", dir.display())
    })
}

fn new_crate(dir: &Path, sdk: Option<PathBuf>) -> anyhow::Result<()> {
    if dir.join("Cargo.toml").exists() {
        bail!("{} already holds a crate", dir.display());
    }
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .context("the directory's name becomes the crate's name: use letters, digits, '-' and '_'")?;
    let checkout_sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../udf-sdk");
    let dependency = match sdk.or_else(|| checkout_sdk.canonicalize().ok()) {
        Some(path) => {
            let path = path.canonicalize().with_context(|| format!("no SDK at {}", path.display()))?;
            format!("ignis-udf = {{ path = {:?} }}", path.display().to_string())
        }
        None => "ignis-udf = { git = \"https://github.com/ignis-data/ignis\" }".to_owned(),
    };
    std::fs::create_dir_all(dir.join("src"))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
             [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\n{dependency}\n\n\
             [profile.release]\nopt-level = 3\n\
             # Link-time optimisation inlines the SDK's per-row glue: much faster in Wasm.\n\
             lto = true\ncodegen-units = 1\nstrip = true\n\n\
             # Its own workspace: a UDF crate builds for wasm32-wasip2.\n[workspace]\n"
        ),
    )?;
    std::fs::write(dir.join("src/lib.rs"), TEMPLATE)?;
    println!("created UDF crate {name} in {}", dir.display());
    println!("next: ignis udf build {0}   then   ignis udf upload {0}", dir.display());
    Ok(())
}

const TEMPLATE: &str = r#"//! My Ignis UDFs. Each `#[ignis_udf::scalar]` function is callable from SQL
//! by its name once the component is uploaded (`ignis udf upload`) and the
//! job lists it under `udfs`.

/// Trims and lower-cases a string.
#[ignis_udf::scalar]
fn normalize(s: &str) -> String {
    s.trim().to_lowercase()
}

/// Adds `percent` percent to `value`; a null percent adds nothing.
#[ignis_udf::scalar]
fn add_percent(value: f64, percent: Option<f64>) -> f64 {
    value * (1.0 + percent.unwrap_or(0.0) / 100.0)
}

ignis_udf::export!(normalize, add_percent);
"#;

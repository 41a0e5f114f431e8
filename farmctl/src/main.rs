//! `farmctl`, the Stylefarm command line.
//!
//! Subcommands that exist today: `render` (one image on this machine, no
//! servers), `weights` (fetch or import VGG-19), `bench`, `graph`, the
//! farm: `up`, `submit`, `status`, `watch`, `fetch`, `cancel`, and
//! `loadtest` (the coordinator under simulated load).

mod bench;
mod farm;
mod flags;
mod loadtest;
mod render;
mod sweep;
mod weights;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "farmctl", version, about = "Stylefarm: neural style transfer, from one image to a render farm")]
struct Cli {
    /// The coordinator the farm commands talk to; several (comma-separated
    /// or the flag repeated) when a farm runs several on one PostgreSQL
    /// database: a command moves to the next when one cannot be reached.
    // (The field is `coordinator`, not `coordinators`: that id is
    // loadtest's count, and two arguments of one id break the parser.)
    #[arg(long, global = true, env = "STYLEFARM_COORDINATOR", default_value = "http://127.0.0.1:50051", value_delimiter = ',', help_heading = CONNECTION)]
    coordinator: Vec<String>,
    /// Bearer token with the user scope.
    #[arg(long, global = true, env = "STYLEFARM_TOKEN", hide_env_values = true, help_heading = CONNECTION)]
    token: Option<String>,
    /// Seconds the farm commands wait for a coordinator that does not
    /// answer (a restart) before giving up.
    #[arg(long, global = true, env = "STYLEFARM_WAIT", default_value_t = farm::RIDE_OUT_SECONDS, help_heading = CONNECTION)]
    wait: u64,
    #[command(flatten, next_help_heading = CONNECTION)]
    tls: stylefarm_shared::client::TlsFlags,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Render one styled image on this machine.
    Render(render::RenderArgs),
    /// Obtain or import the VGG-19 weights.
    #[command(subcommand)]
    Weights(weights::WeightsCommand),
    /// Measure seconds per iteration, GFLOP/s and peak memory.
    Bench(bench::BenchArgs),
    /// Start a local farm: a coordinator and N workers, until Ctrl-C.
    Up(farm::UpArgs),
    /// Submit a collection: every content × every style × every variant.
    Submit(farm::SubmitArgs),
    /// Show a collection's jobs, or (no ID) the farm's workers and collections.
    Status {
        /// The collection: its id or a unique start of it (4 characters
        /// or more).
        id: Option<String>,
        /// Print farm.proto's messages as JSON (a Collection; without ID,
        /// the workers and collections lists) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Follow a collection until it ends; exits 0 only if every job succeeded.
    Watch {
        /// The collection: its id or a unique start of it.
        id: String,
    },
    /// Download a collection's images and a contact sheet.
    Fetch {
        /// The collection: its id or a unique start of it.
        id: String,
        /// The folder to write into (made if missing).
        #[arg(long, short)]
        output: std::path::PathBuf,
    },
    /// Pause a collection: its queued jobs wait (running ones finish their
    /// attempt) until `resume`.
    Pause {
        /// The collection: its id or a unique start of it.
        id: String,
    },
    /// Resume a paused collection.
    Resume {
        /// The collection: its id or a unique start of it.
        id: String,
    },
    /// Set a collection's priority: its queued jobs (and any requeued
    /// later) run before those of collections with a lower one.
    Priority {
        /// The collection: its id or a unique start of it.
        id: String,
        /// The new priority (higher runs first; the default is 0).
        #[arg(allow_negative_numbers = true)]
        priority: i32,
    },
    /// Cancel a collection's remaining jobs, or one job when ID is a job's.
    Cancel {
        /// The collection or the job: its id or a unique start of it.
        id: String,
        /// Refuse unless ID is a job's.
        #[arg(long)]
        job: bool,
    },
    /// Delete a collection: its rows, and every image, log and checkpoint it
    /// left in storage (inputs too, where no other collection uses them).
    Delete {
        /// The collection: its id or a unique start of it.
        id: String,
        /// Cancel its queued and running jobs first (without it, a
        /// collection still at work is refused).
        #[arg(long)]
        cancel: bool,
    },
    /// Put a failed or cancelled job back in the queue, its failure budget
    /// renewed, or render any ended job again with --set changes (or, with
    /// --failed COLLECTION, every failed job of a collection).
    Retry {
        /// The job: its id or a unique start of it.
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        job: Option<String>,
        /// Every failed job of this collection instead.
        #[arg(long, value_name = "COLLECTION")]
        failed: Option<String>,
        /// Change a parameter (repeatable), e.g. --set beta=1000 --set
        /// optimizer=adam: the keys of a submit's variant; the job then
        /// starts again from the init.
        #[arg(long = "set", value_name = "KEY=VALUE", conflicts_with = "failed")]
        set: Vec<String>,
    },
    /// List the workers with their state (online, lost, stopped,
    /// quarantined), or drain, resume or forget one.
    Workers {
        /// Also workers gone for more than an hour, replaced and forgotten.
        #[arg(long)]
        all: bool,
        /// Only workers with this label (KEY=VALUE, as farm-worker --label;
        /// device=cpu and model=… are set by each worker). Repeat: all of them.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = flags::label)]
        labels: Vec<String>,
        /// Print farm.proto's ListWorkersResponse as JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<farm::WorkersCommand>,
    },
    /// Print what the worker logged during a job's attempt (the latest by default).
    Logs {
        /// The job: its id or a unique start of it.
        job: String,
        /// Attempt N (1 is the first) instead of the latest.
        #[arg(long)]
        attempt: Option<u32>,
        /// Keep printing new lines until the job ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Ask the coordinator's gRPC health service whether it serves; exit 0
    /// only if it does (for container health checks).
    Health {
        /// A service name (`stylefarm.v2.Farm`, `stylefarm.v2.Workers`);
        /// empty: the whole server.
        #[arg(long, default_value = "")]
        service: String,
    },
    /// Write the model's graph (layers run, losses fed) as Graphviz DOT.
    Graph(GraphArgs),
    /// Render every content × style with the recipe and faster
    /// configurations; print each one's time to "as good as the recipe".
    Sweep(sweep::SweepArgs),
    /// Load the coordinator with simulated workers and watchers; print
    /// throughput, latencies, its CPU and memory, and check exactly-once.
    Loadtest(loadtest::LoadtestArgs),
}

#[derive(clap::Args)]
struct GraphArgs {
    /// Render size WIDTHxHEIGHT (for the shapes in the graph).
    #[arg(long, default_value = "333x250")]
    size: String,
    /// VGG's pooling: avg or max.
    #[arg(long, value_enum, default_value = "avg")]
    pooling: flags::PoolingArg,
    /// Content layers, `name[:weight]`, comma-separated.
    #[arg(long, default_value = "conv4_2")]
    content_layers: String,
    /// Style layers, `name[:weight]`, comma-separated.
    #[arg(long, default_value = "conv1_1:0.5,conv2_1:1.0,conv3_1:1.5,conv4_1:3.0,conv5_1:4.0")]
    style_layers: String,
    /// Output file (default: standard output).
    #[arg(long, short)]
    output: Option<std::path::PathBuf>,
}

fn graph(args: GraphArgs) -> anyhow::Result<()> {
    use anyhow::Context;
    let (w, h) = stylefarm_shared::size::parse_size(&args.size)?;
    let params = stylefarm_engine::RenderParams {
        pooling: args.pooling.into(),
        content_layers: flags::parse_layers("--content-layers", &args.content_layers)?,
        style_layers: flags::parse_layers("--style-layers", &args.style_layers)?,
        ..Default::default()
    };
    params.validate(1)?;
    let dot = stylefarm_engine::graph::dot(&params, w as usize, h as usize)?;
    match args.output {
        Some(p) => std::fs::write(&p, dot).with_context(|| format!("cannot write {}", p.display())),
        None => {
            print!("{dot}");
            Ok(())
        }
    }
}

fn farm_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// The heading the connection flags are listed under in every command's
/// help, apart from the command's own.
const CONNECTION: &str = "Connection (the farm commands)";

fn main() -> anyhow::Result<()> {
    stylefarm_shared::terminal::end_quietly_on_closed_pipe();
    stylefarm_shared::memory::keep_freed_memory();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let defaulted = |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::DefaultValue);
    let mut url = farm::Coordinators::new(cli.coordinator.clone(), cli.tls.with_token(cli.token.clone()), std::time::Duration::from_secs(cli.wait));
    url.guessed = defaulted("coordinator") && defaulted("wait");
    match cli.command {
        Command::Up(args) => farm::up(args),
        Command::Submit(args) => farm_runtime()?.block_on(farm::submit(&url, args)),
        Command::Status { id, json } => farm_runtime()?.block_on(farm::status(&url, id.as_deref(), json)),
        Command::Watch { id } => {
            if !farm_runtime()?.block_on(farm::watch(&url, &id))? {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Fetch { id, output } => farm_runtime()?.block_on(farm::fetch(&url, &id, &output)),
        Command::Cancel { id, job } => farm_runtime()?.block_on(farm::cancel(&url, &id, job)),
        Command::Pause { id } => farm_runtime()?.block_on(farm::update(&url, &id, Some(true), None)),
        Command::Resume { id } => farm_runtime()?.block_on(farm::update(&url, &id, Some(false), None)),
        Command::Priority { id, priority } => farm_runtime()?.block_on(farm::update(&url, &id, None, Some(priority))),
        Command::Delete { id, cancel } => farm_runtime()?.block_on(farm::delete(&url, &id, cancel)),
        Command::Workers { all, labels, json, action } => {
            farm_runtime()?.block_on(farm::workers(&url, all, &labels, json, action))
        }
        Command::Retry { job, failed, set } => match (job, failed) {
            (_, Some(collection)) => {
                farm_runtime()?.block_on(farm::retry_failed(&url, &collection))
            }
            (Some(job), None) => farm_runtime()?.block_on(farm::retry(&url, &job, &set)),
            (None, None) => anyhow::bail!("name a JOB, or --failed COLLECTION"),
        },
        Command::Logs { job, attempt, follow } => farm_runtime()?.block_on(farm::logs(&url, &job, attempt, follow)),
        Command::Health { service } => farm_runtime()?.block_on(farm::health(&url, &service)),
        Command::Render(args) => render::run(args),
        Command::Weights(cmd) => weights::run(cmd),
        Command::Bench(args) => bench::run(args),
        Command::Graph(args) => graph(args),
        Command::Loadtest(args) => loadtest::run(args),
        Command::Sweep(args) => sweep::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The arguments of `cmd` and its subcommands, as `path: --name`, that
    /// `--help` would show without a word on what they are.
    fn undescribed(cmd: &clap::Command, path: &str, out: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            let id = arg.get_id().as_str();
            if arg.is_hide_set() || id == "help" || id == "version" {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                out.push(format!("{path}: {id}"));
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                out.push(format!("{path} {}: (the command itself)", sub.get_name()));
            }
            undescribed(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    /// The connection flags are listed apart, under their own heading, in
    /// every command's help (a local render's own flags come first).
    #[test]
    fn connection_flags_are_listed_apart() {
        for name in ["render", "status"] {
            let mut cmd = Cli::command();
            cmd.build(); // (global flags reach the subcommands here)
            let text = cmd.find_subcommand_mut(name).unwrap().render_long_help().to_string();
            let apart = text.find(super::CONNECTION).unwrap_or_else(|| panic!("{name}: no heading: {text}"));
            for flag in ["--coordinator <", "--token <", "--wait <", "--tls-ca <"] {
                assert!(text.find(flag).is_some_and(|at| at > apart), "{name}: {flag} under the heading: {text}");
            }
        }
    }

    #[test]
    fn every_argument_and_command_is_described_in_help() {
        let mut out = Vec::new();
        undescribed(&Cli::command(), "farmctl", &mut out);
        assert!(out.is_empty(), "without a description:\n{}", out.join("\n"));
    }

    #[test]
    fn several_coordinators_are_given_either_way_and_loadtest_keeps_its_count() {
        for args in [&["farmctl", "--coordinator", "http://a:1,http://b:2", "status"][..], &["farmctl", "--coordinator", "http://a:1", "--coordinator", "http://b:2", "status"]] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.coordinator, ["http://a:1", "http://b:2"], "{args:?}");
        }
        let cli = Cli::try_parse_from(["farmctl", "loadtest", "--coordinators", "2"]).unwrap();
        assert!(matches!(cli.command, Command::Loadtest(_)));
        assert_eq!(cli.coordinator, ["http://127.0.0.1:50051"]);
    }
}

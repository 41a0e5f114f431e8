//! `farmctl`, the Stylefarm command line.
//!
//! Subcommands that exist today: `render` (one image on this machine, no
//! servers), `weights` (fetch or import VGG-19), `bench` and `graph`. The farm
//! commands (`up`, `submit`, `status`, `watch`, `fetch`, `cancel`) arrive
//! with the coordinator.

mod bench;
mod render;
mod weights;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "farmctl", version, about = "Stylefarm: neural style transfer, from one image to a render farm")]
struct Cli {
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
    /// Write the model's graph (layers run, losses fed) as Graphviz DOT.
    Graph(GraphArgs),
}

#[derive(clap::Args)]
struct GraphArgs {
    /// Render size WIDTHxHEIGHT (for the shapes in the graph).
    #[arg(long, default_value = "333x250")]
    size: String,
    #[arg(long, value_enum, default_value = "avg")]
    pooling: render::PoolingArg,
    #[arg(long, default_value = "conv4_2")]
    content_layers: String,
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
        pooling: match args.pooling {
            render::PoolingArg::Avg => stylefarm_engine::Pooling::Avg,
            render::PoolingArg::Max => stylefarm_engine::Pooling::Max,
        },
        content_layers: render::parse_layers("--content-layers", &args.content_layers)?,
        style_layers: render::parse_layers("--style-layers", &args.style_layers)?,
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

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Render(args) => render::run(args),
        Command::Weights(cmd) => weights::run(cmd),
        Command::Bench(args) => bench::run(args),
        Command::Graph(args) => graph(args),
    }
}

//! `farmctl`, the Stylefarm command line.
//!
//! Subcommands that exist today: `render` (one image on this machine, no
//! servers), `weights` (fetch or import VGG-19) and `bench`. The farm
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Render(args) => render::run(args),
        Command::Weights(cmd) => weights::run(cmd),
        Command::Bench(args) => bench::run(args),
    }
}

//! `flg-worker`: the worker binary. `fastlightgen` forwards its tensor-side commands here
//! (`data`, `sample`, `eval`, `env`, `bench`, ...), and `mpirun` starts one per rank for
//! training (`run`, whose life is `flg_worker::lifecycle`). This file parses and dispatches.

mod args;
mod bench;
mod commands;

use anyhow::Result;
use args::*;
use clap::{CommandFactory, FromArgMatches};

fn main() {
    flg_core::init_logging();
    // Users call these commands as `fastlightgen <command>` (it hands them over to this
    // binary), so usage lines and errors say `fastlightgen`.
    let matches = Cli::command().bin_name("fastlightgen").get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Err(e) = dispatch(cli) {
        // Under mpirun every rank's stderr is one stream: say which rank failed.
        eprintln!("{}error: {e:#}", flg_core::logging::rank_prefix());
        std::process::exit(1);
    }
}

fn dispatch(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Data(DataCommand::Shapes(a)) => commands::data_shapes(a),
        Command::Data(DataCommand::Inspect(a)) => commands::data_inspect(a),
        Command::Data(DataCommand::Verify(a)) => commands::data_verify(a),
        Command::Data(DataCommand::Encode(a)) => commands::data_encode(a),
        Command::Env => commands::env(),
        Command::Sample(a) => commands::sample(a),
        Command::Eval(a) => commands::eval(a),
        Command::Plot(a) => commands::plot(a),
        Command::Annotate(a) => commands::annotate(a),
        Command::Convert(a) => commands::convert(a),
        Command::Export(a) => commands::export(a),
        Command::Train(a) => commands::train(a),
        Command::Run(a) => flg_worker::lifecycle::run_rank(&flg_worker::lifecycle::RankArgs {
            config: &a.config,
            snapshot_every: a.snapshot_every,
            only: &a.stages,
            coordinator: a.coordinator.as_deref(),
            overrides: &a.set,
        }),
        Command::Bench(b) => match b {
            BenchCommand::Device(DeviceBench::Forward(a)) => bench::device_forward(a),
            BenchCommand::Device(DeviceBench::Step(a)) => bench::device_step(a),
            BenchCommand::Recompute(a) => bench::recompute(a),
            BenchCommand::Scaling(a) => bench::scaling(a),
            BenchCommand::Memory(a) => bench::memory(a),
            BenchCommand::Collectives(a) => bench::collectives(a),
            BenchCommand::Checkpoint(a) => bench::checkpoint(a),
            BenchCommand::TrainStep(a) => bench::train_step(a),
        },
        Command::MpiBench(b) => bench::mpi_bench(b),
    }
}

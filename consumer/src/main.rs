use clap::Parser;
use orderflow_common::{db, telemetry};
use orderflow_consumer::settings::{Cli, Command};
use orderflow_consumer::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command, settings } = Cli::parse();
    telemetry::init(settings.log.format);
    match command {
        Some(Command::Migrate) => {
            db::migrate(&db::pool(&settings.database)?).await?;
            tracing::info!("migrations are up to date");
            return Ok(());
        }
        Some(Command::DlqReplay { limit }) => {
            let replayed = orderflow_consumer::replay::replay(&settings, limit).await?;
            println!("re-emitted {replayed} dead letters to {}", settings.kafka.topic);
            return Ok(());
        }
        Some(Command::EventsDump { order_ids }) => {
            let only = match order_ids {
                Some(path) => Some(
                    std::fs::read_to_string(&path)?
                        .lines()
                        .filter(|line| !line.trim().is_empty())
                        .map(|line| line.trim().parse::<uuid::Uuid>())
                        .collect::<Result<std::collections::HashSet<_>, _>>()?,
                ),
                None => None,
            };
            let printed = tokio::task::spawn_blocking(move || {
                let mut out = std::io::BufWriter::new(std::io::stdout().lock());
                orderflow_consumer::events_dump::dump(&settings, only.as_ref(), std::time::Duration::from_secs(120), &mut out)
            })
            .await??;
            tracing::info!(printed, "events dumped");
            return Ok(());
        }
        None => {}
    }
    // A task that ended unexpectedly is already logged with its cause; returning the error
    // makes the exit status non-zero.
    Application::build(settings).await?.run_until_stopped().await?;
    Ok(())
}

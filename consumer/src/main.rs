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
        None => {}
    }
    // A task that ended unexpectedly is already logged with its cause; returning the error
    // makes the exit status non-zero.
    Application::build(settings).await?.run_until_stopped().await?;
    Ok(())
}

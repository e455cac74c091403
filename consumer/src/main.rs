use clap::Parser;
use orderflow_common::{db, telemetry};
use orderflow_consumer::settings::{Cli, Command};
use orderflow_consumer::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command, settings } = Cli::parse();
    telemetry::init(settings.log.format);
    if let Some(Command::Migrate) = command {
        db::migrate(&db::pool(&settings.database)?).await?;
        tracing::info!("migrations are up to date");
        return Ok(());
    }
    Application::build(settings).await?.run_until_stopped().await;
    Ok(())
}

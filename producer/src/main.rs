use clap::Parser;
use orderflow_common::telemetry;
use orderflow_producer::{Application, Settings};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    telemetry::init(settings.log.format);
    let application = Application::build(settings).await?;
    application.run_until_stopped().await?;
    Ok(())
}

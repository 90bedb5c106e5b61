//! `stagesnap config`: every effective setting and where it came from.

use anyhow::Result;
use serde::Serialize;

use super::load_config;
use crate::cli::GlobalArgs;
use crate::config::SettingReport;
use crate::output::{Report, table};

#[derive(Serialize)]
struct Effective {
    config_file: String,
    config_file_source: String,
    base_dir: String,
    base_dir_source: String,
    settings: Vec<SettingReport>,
}

pub fn run(g: &GlobalArgs) -> Result<Report> {
    let cfg = load_config(g)?;
    let settings = cfg.report();
    let mut rows = vec![vec![
        "config_file".to_string(),
        cfg.file.display().to_string(),
        cfg.file_source.clone(),
    ]];
    rows.push(vec![
        "base_dir".to_string(),
        cfg.base.display().to_string(),
        cfg.base_source.clone(),
    ]);
    rows.extend(
        settings
            .iter()
            .map(|s| vec![s.key.to_string(), s.value.clone(), s.source.clone()]),
    );
    let text = table(&["SETTING", "VALUE", "SOURCE"], &rows);
    let effective = Effective {
        config_file: cfg.file.display().to_string(),
        config_file_source: cfg.file_source.clone(),
        base_dir: cfg.base.display().to_string(),
        base_dir_source: cfg.base_source.clone(),
        settings,
    };
    Ok(Report::new("config", &effective, text))
}

//! `oftq train`: fit OFT adapters on layers of an AQLM checkpoint folder from input/target pairs.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use faer::Mat;

use oftq_aqlm::AqlmCheckpoint;
use oftq_layer::dispatch::{Module, OftModel};
use oftq_layer::train::{Activation, AdamW, Loss, LrSchedule, Sequential, Trainer};
use oftq_layer::{OftConfig, TargetModules, save_adapter};

use crate::progress::bar;
use crate::tensor_io::SafetensorsFile;

/// Arguments of `oftq train`.
#[derive(Debug, Clone)]
pub(crate) struct TrainArgs {
    pub(crate) model: PathBuf,
    pub(crate) target_modules: Vec<String>,
    pub(crate) data: PathBuf,
    pub(crate) out: PathBuf,
    pub(crate) config: OftConfig,
    pub(crate) steps: usize,
    pub(crate) lr: f64,
    pub(crate) seed: u64,
    pub(crate) quiet: bool,
}

/// Trains one adapter per matched module and saves them as one PEFT adapter folder.
///
/// The data file holds `x` and `y` (one matched module: `y ≈ layer(x)`) or, per module,
/// `<module>.x` and `<module>.y`. Full-batch AdamW with a cosine schedule. Returns a summary.
pub(crate) fn run(args: &TrainArgs) -> Result<String> {
    let ckpt = AqlmCheckpoint::load(&args.model)?;
    let mut model = OftModel::from_checkpoint(&ckpt);
    let mut config = args.config.clone();
    config.target_modules = Some(TargetModules::List(args.target_modules.clone()));
    let names = model.inject("default", &config)?;
    let data = SafetensorsFile::open(&args.data)?;
    let tensors = data.names()?;
    let pair = |prefix: &str| -> Result<Option<(Mat<f32>, Mat<f32>)>> {
        let (xn, yn) = if prefix.is_empty() {
            ("x".to_string(), "y".to_string())
        } else {
            (format!("{prefix}.x"), format!("{prefix}.y"))
        };
        match (data.float(&xn)?, data.float(&yn)?) {
            (Some(x), Some(y)) => Ok(Some((x.to_tokens()?, y.to_tokens()?))),
            (None, None) => Ok(None),
            _ => bail!("{}: found only one of {xn} and {yn}", args.data.display()),
        }
    };
    let mut summary = String::new();
    let mut weights: BTreeMap<String, Mat<f32>> = BTreeMap::new();
    for name in &names {
        let (x, y) = match pair(name)? {
            Some(p) => p,
            None if names.len() == 1 => pair("")?.with_context(|| {
                format!(
                    "{}: no tensors x and y (has {tensors:?})",
                    args.data.display()
                )
            })?,
            None => bail!(
                "{}: no tensors {name}.x and {name}.y for module {name}",
                args.data.display()
            ),
        };
        let module = model
            .modules
            .get(name)
            .cloned()
            .context("injected module vanished")?;
        if !matches!(module, Module::OftAqlm(_)) {
            bail!("module {name} is not an AQLM layer");
        }
        let seq = Sequential::new().push(name, module, Activation::Identity);
        let mut optimizer = AdamW::new(args.lr);
        optimizer.weight_decay = 0.0;
        let mut trainer = Trainer::new(
            seq,
            optimizer,
            LrSchedule::Cosine {
                warmup: 5,
                min_ratio: 0.1,
            },
            args.seed,
        );
        let loss = Loss::Mse(y);
        let before = trainer
            .evaluate(x.as_ref(), &loss)
            .with_context(|| format!("module {name}"))?;
        let pb = bar(args.steps as u64, name, args.quiet);
        trainer.fit(
            args.steps,
            |_| Ok((x.clone(), loss.clone())),
            |s| {
                pb.inc(1);
                pb.set_message(format!("loss {:.3e}", s.loss));
                ControlFlow::Continue(())
            },
        )?;
        pb.finish_and_clear();
        let after = trainer.evaluate(x.as_ref(), &loss)?;
        summary.push_str(&format!("{name}: loss {before:.4e} -> {after:.4e}\n"));
        let (_, a) = trainer
            .model
            .adapters()
            .into_iter()
            .next()
            .context("no adapter after training")?;
        weights.insert(name.clone(), a.weight().to_owned());
    }
    let refs: BTreeMap<String, faer::MatRef<'_, f32>> = weights
        .iter()
        .map(|(k, v)| (k.clone(), v.as_ref()))
        .collect();
    let dir = save_adapter(&args.out, "default", &config, &refs)?;
    summary.push_str(&format!("wrote {}\n", dir.display()));
    Ok(summary)
}

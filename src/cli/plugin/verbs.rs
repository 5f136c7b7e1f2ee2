//! Each verb run: connect as kubectl does, call the library, print.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;

use super::super::inventory;
use super::args::{DataFormat, DebugArgs, ExplainArgs, Global, PluginInventoryArgs, ProfileArg, RolloutVerb};
use crate::kubectl::{Error, debug, explain, rollout};

fn print_data<T: serde::Serialize>(value: &T, format: DataFormat) -> anyhow::Result<()> {
    match format {
        DataFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
        DataFormat::Yaml => print!("{}", serde_saphyr::to_string(value)?),
        DataFormat::Text => unreachable!("text is printed by the caller"),
    }
    Ok(())
}

/// An error of ours with the server it concerned, when it is about reaching it.
fn with_server(e: Error, server: &str) -> anyhow::Error {
    match e {
        e @ Error::Unreachable { .. } => {
            anyhow::anyhow!("{e} (server {server}); is the cluster up and the kubeconfig current?")
        }
        other => anyhow::Error::new(other),
    }
}

pub(super) async fn debug_cmd(global: &Global, args: &DebugArgs) -> anyhow::Result<bool> {
    let (client, ns, server) = global.connection().connect().await?;
    let req = debug::Request {
        pod: args.pod.clone(),
        container: args.container.clone(),
        image: args.image.clone(),
        profile: match args.profile {
            ProfileArg::Restricted => debug::Profile::Restricted,
            ProfileArg::Netadmin => debug::Profile::Netadmin,
            ProfileArg::Sysadmin => debug::Profile::Sysadmin,
        },
        volumes_from_target: args.volumes_from_target,
        env_from_target: args.env_from_target,
        force: args.force,
    };
    let inspector = crate::image::Inspector::new(args.registry.inspector_config()?)?;
    let done = debug::run(&client, &ns, &req, Some(&inspector))
        .await
        .map_err(|e| with_server(e, &server))?;
    if done.reused {
        eprintln!(
            "reusing the running debug container {} (same image, profile and options)",
            done.container
        );
    }
    for line in &done.guide {
        eprintln!("{line}");
    }
    let mut attach = vec!["attach".to_string(), "-it".into(), "-n".into(), ns.clone()];
    attach.extend(global.kubectl_args());
    attach.extend([args.pod.clone(), "-c".into(), done.container.clone()]);
    if args.no_attach {
        println!("{}", done.container);
        eprintln!("attach with: kubectl {}", attach.join(" "));
        return Ok(true);
    }
    let status = std::process::Command::new("kubectl")
        .args(&attach)
        .status()
        .context("cannot run kubectl attach (is kubectl on the PATH?)")?;
    Ok(status.success())
}

pub(super) async fn explain_cmd(global: &Global, args: &ExplainArgs) -> anyhow::Result<bool> {
    let (kind, name) = explain::parse_target(&args.target)?;
    let (client, ns, server) = global.connection().connect().await?;
    let x = explain::explain(&client, &ns, &kind, &name)
        .await
        .map_err(|e| with_server(e, &server))?;
    match args.output {
        DataFormat::Text => explain::render(&x).iter().for_each(|l| println!("{l}")),
        f => print_data(&x, f)?,
    }
    Ok(true)
}

pub(super) async fn inventory_cmd(global: &Global, args: &PluginInventoryArgs) -> anyhow::Result<bool> {
    let (client, ns, server) = global.connection().connect().await?;
    let scope = (!args.all_namespaces).then_some(ns.as_str());
    let inspector = if args.no_images {
        None
    } else {
        Some(crate::image::Inspector::new(args.registry.inspector_config()?)?)
    };
    let source = match scope {
        Some(ns) => format!("cluster {server}, namespace {ns}"),
        None => format!("cluster {server}, every namespace"),
    };
    let inv = crate::kubectl::inventory::gather(&client, scope, &source, inspector.as_ref())
        .await
        .map_err(|e| with_server(e, &server))?;
    inventory::print(&inv, args.output)?;
    Ok(true)
}

pub(super) async fn rollout_cmd(global: &Global, verb: &RolloutVerb) -> anyhow::Result<ExitCode> {
    let (client, ns, server) = global.connection().connect().await?;
    let fail = |e: Error| with_server(e, &server);
    let act = |name: &str, v: rollout::Verb, done: &str| {
        let (client, ns, name, done) = (client.clone(), ns.clone(), name.to_string(), done.to_string());
        async move {
            rollout::act(&client, &ns, &name, v).await?;
            println!("distrolessrollout.distrolessguard.dev/{name} {done}");
            Ok::<_, Error>(ExitCode::SUCCESS)
        }
    };
    Ok(match verb {
        RolloutVerb::Get {
            name: Some(name),
            watch,
            output,
            ..
        } => {
            let r = rollout::get(&client, &ns, name).await.map_err(fail)?;
            match output {
                DataFormat::Text => rollout::describe_rollout(&r).iter().for_each(|l| println!("{l}")),
                f => print_data(&r, *f)?,
            }
            if *watch {
                rollout::wait(&client, &ns, name, Duration::from_secs(u64::MAX / 4), |r| {
                    println!("{}", rollout::summary(r));
                })
                .await
                .map_err(fail)?;
            }
            ExitCode::SUCCESS
        }
        RolloutVerb::Get {
            name: None,
            all_namespaces,
            watch,
            output,
        } => {
            let scope = (!all_namespaces).then_some(ns.as_str());
            let list = rollout::list(&client, scope).await.map_err(fail)?;
            match output {
                DataFormat::Text => print_table(&list, *all_namespaces),
                f => print_data(&list, *f)?,
            }
            if *watch {
                let api: kube::Api<crate::api::DistrolessRollout> = match scope {
                    Some(ns) => kube::Api::namespaced(client.clone(), ns),
                    None => kube::Api::all(client.clone()),
                };
                use kube::runtime::{WatchStreamExt, watcher};
                let mut stream = std::pin::pin!(
                    watcher(api, watcher::Config::default())
                        .default_backoff()
                        .applied_objects()
                );
                while let Some(r) = stream.next().await {
                    if let Ok(r) = r {
                        println!("{}\t{}", kube::ResourceExt::name_any(&r), rollout::summary(&r));
                    }
                }
            }
            ExitCode::SUCCESS
        }
        RolloutVerb::Status { name, timeout } => {
            let outcome = rollout::wait(&client, &ns, name, *timeout, |r| {
                println!("{}", rollout::summary(r));
            })
            .await
            .map_err(fail)?;
            match outcome {
                rollout::Outcome::Succeeded => ExitCode::SUCCESS,
                rollout::Outcome::Paused => {
                    println!("rollout {name} is paused: `kubectl distroless rollout promote {name}` continues it");
                    ExitCode::SUCCESS
                }
                rollout::Outcome::RolledBack | rollout::Outcome::GitRevertNeeded => {
                    let r = rollout::get(&client, &ns, name).await.map_err(fail)?;
                    rollout::describe_rollout(&r).iter().for_each(|l| eprintln!("{l}"));
                    ExitCode::from(1)
                }
                rollout::Outcome::TimedOut => {
                    eprintln!("error: rollout {name} did not finish within {timeout:?}");
                    ExitCode::from(2)
                }
            }
        }
        RolloutVerb::Promote { name, full } => {
            let what = if *full { "promoted to 100%" } else { "promoted" };
            act(name, rollout::Verb::Promote { full: *full }, what)
                .await
                .map_err(fail)?
        }
        RolloutVerb::Pause { name } => act(name, rollout::Verb::Pause, "paused").await.map_err(fail)?,
        RolloutVerb::Resume { name } => act(name, rollout::Verb::Resume, "resumed").await.map_err(fail)?,
        RolloutVerb::Abort { name } => act(name, rollout::Verb::Abort, "aborted").await.map_err(fail)?,
        RolloutVerb::Retry { name } => act(name, rollout::Verb::Retry, "retried").await.map_err(fail)?,
        RolloutVerb::Undo { name, timeout } => {
            rollout::undo(&client, &ns, name, *timeout).await.map_err(fail)?;
            println!("distrolessrollout.distrolessguard.dev/{name} undone: rolled back and deleted");
            ExitCode::SUCCESS
        }
    })
}

pub(super) fn print_table(list: &[crate::api::DistrolessRollout], namespaces: bool) {
    let mut rows = vec![
        vec!["NAME", "PHASE", "STEP", "WEIGHT", "EFFECTIVE", "REASON"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>(),
    ];
    if namespaces {
        rows[0].insert(0, "NAMESPACE".into());
    }
    for r in list {
        let s = r.status.clone().unwrap_or_default();
        let mut row = vec![
            kube::ResourceExt::name_any(r),
            s.phase.as_str().to_string(),
            format!(
                "{}/{}",
                (s.current_step as usize + 1).min(r.spec.steps.len()),
                r.spec.steps.len()
            ),
            format!("{}%", s.desired_weight),
            format!("{}%", s.effective_weight),
            s.failure.map(|f| f.reason.to_string()).unwrap_or_default(),
        ];
        if namespaces {
            row.insert(0, r.metadata.namespace.clone().unwrap_or_default());
        }
        rows.push(row);
    }
    if list.is_empty() {
        eprintln!("No distrolessrollouts found.");
        return;
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("   ").trim_end());
    }
}

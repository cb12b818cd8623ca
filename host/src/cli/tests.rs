//! Checks of the command line: the deploy files' commands and settings parse, and the
//! flags left out give the library's defaults.

use super::*;
use clap::CommandFactory;
use serde::Deserialize;
use serde_yaml::Value;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// `args` with each `LOCUS_*` setting of `env` turned into the flag that reads it, so
/// that parsing checks the settings' names and values too. A setting that no flag of
/// the subcommand reads fails, unless another subcommand reads it (`locus probe`'s
/// LOCUS_HEALTH_URL in a worker's container).
fn with_env(args: &[String], env: &[(String, String)], place: &str) -> Vec<String> {
    let cli = Cli::command();
    let sub = cli
        .find_subcommand(&args[0])
        .unwrap_or_else(|| panic!("{place}: `{}` is no locus command", args[0]));
    let mut out: Vec<String> =
        ["locus".to_string()].into_iter().chain(args.iter().cloned()).collect();
    for (key, value) in env.iter().filter(|(k, _)| k.starts_with("LOCUS_")) {
        let reads = |a: &clap::Arg| a.get_env().is_some_and(|e| e == key.as_str());
        match sub.get_arguments().find(|a| reads(a)) {
            Some(arg) => {
                let long = arg.get_long().expect("settings read from the environment have a flag");
                if arg.get_action().takes_values() {
                    out.push(format!("--{long}={value}"));
                } else {
                    // A switch read from the environment: true/false, 1/0, yes/no, on/off.
                    use clap::builder::TypedValueParser;
                    let on = clap::builder::BoolishValueParser::new()
                        .parse_ref(sub, Some(arg), std::ffi::OsStr::new(value))
                        .unwrap_or_else(|e| panic!("{place}: {key}={value}: {e}"));
                    if on {
                        out.push(format!("--{long}"));
                    }
                }
            }
            None => assert!(
                cli.get_subcommands().any(|s| s.get_arguments().any(reads)),
                "{place}: {key} is no setting of `locus {}` (nor of any other command)",
                args[0]
            ),
        }
    }
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| s.iter().map(|x| x.as_str().expect("a string").to_string()).collect())
        .unwrap_or_default()
}

fn parses(args: &[String], place: &str) {
    if let Err(e) = Cli::try_parse_from(args) {
        panic!("{place}: `{}` is refused: {e}", args.join(" "));
    }
}

#[test]
fn deploy_files_use_flags_and_settings_the_cli_accepts() {
    // Kubernetes: every container's args, with the ConfigMaps it reads as settings.
    let mut config_maps = std::collections::HashMap::new();
    let mut containers = Vec::new();
    for file in ["config.yaml", "workers.yaml", "router.yaml"] {
        let text = std::fs::read_to_string(format!("{ROOT}/deploy/k8s/{file}")).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let doc = Value::deserialize(doc).unwrap();
            let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
            if doc["kind"] == "ConfigMap" {
                let data: Vec<(String, String)> = doc["data"]
                    .as_mapping()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| {
                                (k.as_str().unwrap().to_string(), v.as_str().unwrap().to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                config_maps.insert(name, data);
            } else if let Some(cs) = doc["spec"]["template"]["spec"]["containers"].as_sequence() {
                for c in cs {
                    containers.push((format!("{file}: {name}"), c.clone()));
                }
            }
        }
    }
    assert_eq!(containers.len(), 2, "a worker and a router container");
    for (place, c) in &containers {
        let mut env = Vec::new();
        for from in c["envFrom"].as_sequence().into_iter().flatten() {
            let cm = from["configMapRef"]["name"].as_str().unwrap();
            env.extend(
                config_maps.get(cm).unwrap_or_else(|| panic!("{place}: no ConfigMap {cm}")).clone(),
            );
        }
        parses(&with_env(&strings(&c["args"]), &env, place), place);
    }
    // Compose: every service's command and environment.
    let text = std::fs::read_to_string(format!("{ROOT}/docker-compose.yml")).unwrap();
    let mut compose: Value = serde_yaml::from_str(&text).unwrap();
    // `<<: *worker`, as Compose reads it.
    compose.apply_merge().unwrap();
    let services = compose["services"].as_mapping().unwrap();
    assert_eq!(services.len(), 4, "three workers and a router");
    for (name, s) in services {
        let place = format!("docker-compose.yml: {}", name.as_str().unwrap());
        let env: Vec<(String, String)> = s["environment"]
            .as_mapping()
            .unwrap()
            .iter()
            // No value: passed on from the caller's environment, absent when unset
            // there (an empty value would be a value, and refused).
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| {
                // `${VAR:-default}` as Compose expands it when VAR is unset.
                let v = v.as_str().unwrap();
                let v = match v.strip_prefix("${").and_then(|r| r.split_once(":-")) {
                    Some((_, d)) => d.trim_end_matches('}'),
                    None => v,
                };
                (k.as_str().unwrap().to_string(), v.to_string())
            })
            .collect();
        parses(&with_env(&strings(&s["command"]), &env, &place), &place);
        assert_eq!(strings(&s["healthcheck"]["test"]), ["CMD", "/locus", "probe"], "{place}");
    }
    // The image's own command and health check.
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    for (prefix, want) in [("CMD ", "run"), ("HEALTHCHECK ", "probe")] {
        let line = dockerfile.lines().find(|l| l.starts_with(prefix)).unwrap();
        let json = &line[line.find('[').unwrap()..];
        let mut args: Vec<String> = serde_json::from_str(json).unwrap();
        if args[0] == "/locus" {
            args.remove(0);
        }
        assert_eq!(args[0], want);
        parses(&["locus".to_string()].into_iter().chain(args).collect::<Vec<_>>(), "Dockerfile");
    }
}

#[test]
fn a_bad_setting_in_a_deploy_file_would_be_caught() {
    let args = ["worker".to_string()];
    let env = [("LOCUS_MAX_BATCH".to_string(), "many".to_string())];
    let full = with_env(&args, &env, "test");
    assert!(Cli::try_parse_from(&full).is_err(), "{full:?}");
    let unknown = [("LOCUS_NO_SUCH".to_string(), "1".to_string())];
    let caught = std::panic::catch_unwind(|| with_env(&args, &unknown, "test"));
    assert!(caught.is_err());
}

/// `{:?}` of the options `args` give, for comparing whole structs (the options have no
/// `PartialEq`).
fn parsed(args: &[&str]) -> (String, String) {
    match Cli::try_parse_from(args).unwrap().command {
        Command::Router(a) => (format!("{:?}", a.options().unwrap()), String::new()),
        Command::Worker(a) => {
            (format!("{:?}", a.options(|| "host".into()).unwrap()), String::new())
        }
        Command::Run(a) => {
            let c = a.options("t").unwrap();
            (format!("{:?}", c.router), format!("{:?}", c.worker))
        }
        _ => unreachable!(),
    }
}

#[test]
fn flags_left_out_give_the_options_defaults() {
    use locus::router::RouterOptions;
    use locus::worker::WorkerOptions;
    let (router, _) = parsed(&["locus", "router", "--workers", "http://w"]);
    let want = RouterOptions { workers: vec!["http://w".into()], ..RouterOptions::default() };
    assert_eq!(router, format!("{want:?}"));
    let (worker, _) = parsed(&["locus", "worker", "--port", "7"]);
    let want = WorkerOptions { worker_id: "host:7".into(), ..WorkerOptions::default() };
    assert_eq!(worker, format!("{want:?}"));
    // `locus run` gives both the same admin token, its own or a random one.
    let token = Some("t".to_string());
    let (router, worker) = parsed(&["locus", "run"]);
    let want = RouterOptions { admin_token: token.clone(), ..RouterOptions::default() };
    assert_eq!(router, format!("{want:?}"));
    let want = WorkerOptions { admin_token: token, ..WorkerOptions::default() };
    assert_eq!(worker, format!("{want:?}"));
}

#[test]
fn flags_are_raised_refused_or_emptied_as_they_always_were() {
    let (router, _) = parsed(&[
        "locus",
        "router",
        "--workers=http://w",
        "--health-interval-ms=1",
        "--fail-threshold=0",
        "--success-threshold=0",
        "--max-faults=0",
        "--header-timeout-s=0",
        "--body-timeout-s=0",
        "--max-body-bytes=1",
        "--worker-token=",
        "--session-header=X-Session",
    ]);
    for part in [
        "health_interval: 10ms",
        "fail_threshold: 1",
        "success_threshold: 1",
        "max_faults: 1",
        "header_read_timeout: 1s",
        "body_read_timeout: 1s",
        "max_body_bytes: 1024",
        "worker_token: None",
        "session_header: \"x-session\"",
    ] {
        assert!(router.contains(part), "{part} in {router}");
    }
    for refused in [
        ["locus", "router", "--workers=http://w", "--load-interval-ms=9"],
        ["locus", "router", "--workers=http://w", "--discover-interval-ms=9"],
        ["locus", "router", "--workers=http://w", "--audit-log="],
    ] {
        assert!(Cli::try_parse_from(refused).is_err(), "{refused:?}");
    }
    let watch = Cli::try_parse_from(["locus", "router", "--workers=http://w", "--watch"]);
    let Command::Router(a) = watch.unwrap().command else { unreachable!() };
    assert!(a.options().is_err(), "--watch needs a policy file");
}

#[test]
fn the_cluster_token_and_the_admin_token_are_kept_apart() {
    let has = |opts: &str, field: &str, value: &str| {
        opts.contains(&format!("{field}: Some(\"{value}\")"))
    };
    let (router, _) =
        parsed(&["locus", "router", "--workers=http://w", "--cluster-token=c", "--admin-token=a"]);
    assert!(has(&router, "cluster_token", "c") && has(&router, "admin_token", "a"), "{router}");
    let (worker, _) = parsed(&["locus", "worker", "--cluster-token=c", "--admin-token=a"]);
    assert!(has(&worker, "cluster_token", "c") && has(&worker, "admin_token", "a"), "{worker}");
    // `locus run` gives its one cluster token to the router and every worker.
    let (router, worker) = parsed(&["locus", "run", "--cluster-token=c"]);
    assert!(has(&router, "cluster_token", "c") && has(&router, "admin_token", "t"), "{router}");
    assert!(has(&worker, "cluster_token", "c") && has(&worker, "admin_token", "t"), "{worker}");
    let (worker, _) = parsed(&["locus", "worker", "--cluster-token=c"]);
    assert!(worker.contains("admin_token: None"), "{worker}");
}

#[test]
fn threads_are_a_count_from_one_and_absent_by_default() {
    let threads = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
        Ok(Command::Worker(a)) => Ok(a.threads.threads),
        Ok(Command::Run(a)) => Ok(a.threads.threads),
        Ok(_) => unreachable!(),
        Err(e) => Err(e.kind()),
    };
    assert_eq!(threads(&["locus", "worker"]), Ok(None));
    assert_eq!(threads(&["locus", "worker", "--threads", "1"]), Ok(Some(1)));
    assert_eq!(threads(&["locus", "run", "--threads=2"]), Ok(Some(2)));
    for bad in ["0", "-1", "two", "1025"] {
        assert_eq!(
            threads(&["locus", "worker", &format!("--threads={bad}")]),
            Err(clap::error::ErrorKind::ValueValidation),
            "{bad}"
        );
    }
}

#[test]
fn weight_format_is_f32_by_default_and_a_named_format_otherwise() {
    use locus_engine::WeightFormat;
    let format = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
        Ok(Command::Worker(a)) => Ok(a.model.engine_options().unwrap().weights),
        Ok(Command::Run(a)) => Ok(a.model.engine_options().unwrap().weights),
        Ok(_) => unreachable!(),
        Err(e) => Err(e.to_string()),
    };
    assert_eq!(format(&["locus", "worker"]), Ok(WeightFormat::F32));
    assert_eq!(format(&["locus", "worker", "--weight-format", "q8_0"]), Ok(WeightFormat::Q8_0));
    assert_eq!(format(&["locus", "run", "--weight-format=f32"]), Ok(WeightFormat::F32));
    let err = format(&["locus", "worker", "--weight-format", "int4"]).unwrap_err();
    assert!(err.contains("--weight-format") && err.contains("f32, q8_0"), "{err}");
}

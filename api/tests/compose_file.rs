//! The local stack as `docker-compose.yml` and the `Dockerfile` describe it: every service present
//! and health-checked, started in dependency order, wired to Postgres and RabbitMQ, reachable on the
//! published ports, and built from one image that holds every binary compose runs.
//!
//! No Docker is needed: the files are parsed, not run. YAML merge keys (`<<: *anchor`) are resolved
//! first, so the assertions see each service as compose does.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_yaml_ng::Value;

/// Each Conveyor service and the variable that holds its listen address.
const APP_SERVICES: [(&str, &str); 4] = [
    ("api", "CONVEYOR_API_ADDR"),
    ("worker", "CONVEYOR_WORKER_ADDR"),
    ("scheduler", "CONVEYOR_SCHEDULER_ADDR"),
    ("sandbox", "CONVEYOR_SANDBOX_ADDR"),
];

/// The services that talk to Postgres and RabbitMQ.
const BACKEND_USERS: [&str; 3] = ["api", "worker", "scheduler"];

fn workspace_file(name: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    (path, text)
}

fn compose() -> Value {
    let (path, text) = workspace_file("docker-compose.yml");
    let mut compose: Value = serde_yaml_ng::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
    compose.apply_merge().unwrap_or_else(|e| {
        panic!(
            "cannot resolve the `<<:` merge keys in {}: {e}",
            path.display()
        )
    });
    compose
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose
        .get("services")
        .and_then(|services| services.get(name))
        .unwrap_or_else(|| panic!("docker-compose.yml has no `{name}` service"))
}

fn service_names(compose: &Value) -> Vec<String> {
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("docker-compose.yml has no `services:` map");
    services
        .keys()
        .filter_map(|key| key.as_str().map(str::to_owned))
        .collect()
}

/// A scalar as text (compose accepts `2`, `true` and `"2"` alike in many places).
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// A command-like field (`command`, `healthcheck.test`) as words: a string is split on whitespace,
/// a list is taken as is.
fn words(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(text)) => text.split_whitespace().map(str::to_owned).collect(),
        Some(Value::Sequence(items)) => items.iter().filter_map(scalar).collect(),
        _ => Vec::new(),
    }
}

/// A service's environment, whether written as a map or as a list of `KEY=value`.
fn environment(service: &Value) -> BTreeMap<String, String> {
    match service.get("environment") {
        Some(Value::Mapping(map)) => map
            .iter()
            .filter_map(|(key, value)| {
                Some((key.as_str()?.to_owned(), scalar(value).unwrap_or_default()))
            })
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|item| match item.split_once('=') {
                Some((key, value)) => (key.to_owned(), value.to_owned()),
                None => (item.to_owned(), String::new()),
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// Published ports as (host port, container port), from the short (`[ip:]host:container[/proto]`)
/// or the long (`{target, published}`) syntax. A bare container port publishes nothing fixed.
fn published_ports(service: &Value) -> Vec<(u16, u16)> {
    let Some(ports) = service.get("ports").and_then(Value::as_sequence) else {
        return Vec::new();
    };
    ports
        .iter()
        .filter_map(|port| match port {
            Value::Mapping(_) => {
                let target = scalar(port.get("target")?)?.parse().ok()?;
                let published = scalar(port.get("published")?)?.parse().ok()?;
                Some((published, target))
            }
            _ => {
                let text = scalar(port)?;
                let text = text.split('/').next()?;
                let mut parts = text.rsplit(':');
                let container = parts.next()?.parse().ok()?;
                let host = parts.next()?.parse().ok()?;
                Some((host, container))
            }
        })
        .collect()
}

fn port_of(addr: &str) -> Option<u16> {
    addr.rsplit_once(':')?.1.parse().ok()
}

#[test]
fn the_stack_has_every_service() {
    let compose = compose();
    let names = service_names(&compose);
    for expected in [
        "postgres",
        "rabbitmq",
        "api",
        "worker",
        "scheduler",
        "sandbox",
    ] {
        assert!(
            names.iter().any(|name| name == expected),
            "docker-compose.yml has no `{expected}` service (it has {names:?})"
        );
    }
    let image = |name| {
        service(&compose, name)
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        image("postgres").starts_with("postgres"),
        "postgres runs image `{}`, not a postgres image",
        image("postgres")
    );
    let rabbitmq = image("rabbitmq");
    assert!(
        rabbitmq.starts_with("rabbitmq") && rabbitmq.contains("management"),
        "rabbitmq runs image `{rabbitmq}`; it needs a `rabbitmq:*-management` image for the management UI"
    );
    for (name, _) in APP_SERVICES {
        assert!(
            service(&compose, name).get("build").is_some(),
            "`{name}` has no `build:`; every Conveyor service runs the image built from the Dockerfile"
        );
    }
}

#[test]
fn every_service_has_a_healthcheck() {
    let compose = compose();
    for name in service_names(&compose) {
        let healthcheck = service(&compose, &name)
            .get("healthcheck")
            .unwrap_or_else(|| {
                panic!("`{name}` has no healthcheck, so nothing can wait for it to be healthy")
            });
        assert_ne!(
            healthcheck.get("disable").and_then(Value::as_bool),
            Some(true),
            "`{name}` disables its healthcheck"
        );
        let test = words(healthcheck.get("test"));
        let command_len = match test.first().map(String::as_str) {
            Some("CMD" | "CMD-SHELL") => test.len() - 1,
            Some("NONE") => 0,
            _ => test.len(),
        };
        assert!(
            command_len > 0,
            "`{name}`'s healthcheck has no test command (test: {test:?})"
        );
        for field in ["interval", "timeout", "retries"] {
            assert!(
                healthcheck.get(field).is_some(),
                "`{name}`'s healthcheck has no `{field}`"
            );
        }
    }
    let rabbitmq = service(&compose, "rabbitmq")
        .get("healthcheck")
        .expect("checked above");
    assert!(
        rabbitmq.get("start_period").is_some(),
        "rabbitmq's healthcheck has no `start_period`; the broker takes a while to boot and would be marked unhealthy"
    );
}

#[test]
fn services_start_only_once_their_dependencies_are_healthy() {
    let compose = compose();
    let required: [(&str, &[&str]); 4] = [
        ("api", &["postgres", "rabbitmq"]),
        ("worker", &["api", "rabbitmq", "sandbox"]),
        ("scheduler", &["api"]),
        ("sandbox", &[]),
    ];
    for (name, needs) in required {
        let depends_on = service(&compose, name).get("depends_on");
        if let Some(Value::Sequence(_)) = depends_on {
            panic!(
                "`{name}` lists depends_on without conditions, which only waits for containers to start; use `condition: service_healthy`"
            );
        }
        let depends_on = depends_on.and_then(Value::as_mapping);
        for need in needs {
            assert!(
                depends_on.is_some_and(|deps| deps.contains_key(*need)),
                "`{name}` does not depend on `{need}`"
            );
        }
        for (dependency, settings) in depends_on.into_iter().flatten() {
            let dependency = dependency.as_str().unwrap_or_default();
            let condition = settings.get("condition").and_then(Value::as_str);
            assert_eq!(
                condition,
                Some("service_healthy"),
                "`{name}` depends on `{dependency}` with condition {condition:?}, not `service_healthy`"
            );
            assert!(
                service(&compose, dependency).get("healthcheck").is_some(),
                "`{name}` waits for `{dependency}` to be healthy, but `{dependency}` has no healthcheck"
            );
        }
    }
}

#[test]
fn the_worker_runs_two_replicas() {
    let compose = compose();
    let worker = service(&compose, "worker");
    let replicas = worker
        .get("deploy")
        .and_then(|deploy| deploy.get("replicas"))
        .and_then(Value::as_u64);
    assert_eq!(
        replicas,
        Some(2),
        "the worker should run 2 replicas (`deploy: replicas: 2`), found {replicas:?}"
    );
    assert!(
        worker.get("container_name").is_none(),
        "the worker sets `container_name`, which cannot be shared by 2 replicas"
    );
    assert!(
        published_ports(worker).is_empty(),
        "the worker publishes fixed host ports {:?}; 2 replicas cannot bind the same host port",
        published_ports(worker)
    );
}

#[test]
fn the_public_ports_are_published() {
    let compose = compose();
    for (name, port) in [
        ("api", 8080),
        ("rabbitmq", 5672),
        ("rabbitmq", 15672),
        ("sandbox", 8090),
    ] {
        let ports = published_ports(service(&compose, name));
        assert!(
            ports.contains(&(port, port)),
            "`{name}` does not publish port {port} as {port}:{port} (it publishes {ports:?})"
        );
    }
    for (name, addr_var) in [
        ("api", "CONVEYOR_API_ADDR"),
        ("sandbox", "CONVEYOR_SANDBOX_ADDR"),
    ] {
        let service = service(&compose, name);
        let listen = environment(service)
            .get(addr_var)
            .and_then(|addr| port_of(addr));
        assert!(
            published_ports(service)
                .iter()
                .any(|&(_, container)| Some(container) == listen),
            "`{name}` listens on port {listen:?} ({addr_var}) but does not publish that container port"
        );
    }
}

#[test]
fn app_services_reach_the_backends_and_listen_on_all_interfaces() {
    let compose = compose();
    let postgres_env = environment(service(&compose, "postgres"));
    for name in BACKEND_USERS {
        let env = environment(service(&compose, name));
        let database_url = env
            .get("DATABASE_URL")
            .unwrap_or_else(|| panic!("`{name}` has no DATABASE_URL"));
        assert!(
            database_url.starts_with("postgres://") && database_url.contains("@postgres:5432/"),
            "`{name}`'s DATABASE_URL `{database_url}` does not point at the `postgres` service"
        );
        match postgres_env.get("POSTGRES_PASSWORD") {
            Some(password) => assert!(
                database_url.contains(&format!(":{password}@")),
                "`{name}`'s DATABASE_URL lacks the password postgres is started with"
            ),
            None => assert_eq!(
                postgres_env
                    .get("POSTGRES_HOST_AUTH_METHOD")
                    .map(String::as_str),
                Some("trust"),
                "postgres has neither POSTGRES_PASSWORD nor POSTGRES_HOST_AUTH_METHOD=trust, so it will not start"
            ),
        }
        let amqp_url = env
            .get("AMQP_URL")
            .unwrap_or_else(|| panic!("`{name}` has no AMQP_URL"));
        assert!(
            amqp_url.starts_with("amqp://") && amqp_url.contains("@rabbitmq:5672/"),
            "`{name}`'s AMQP_URL `{amqp_url}` does not point at the `rabbitmq` service"
        );
    }
    for (name, addr_var) in APP_SERVICES {
        let env = environment(service(&compose, name));
        let addr = env
            .get(addr_var)
            .unwrap_or_else(|| panic!("`{name}` has no {addr_var}"));
        assert!(
            addr.starts_with("0.0.0.0:") && port_of(addr).is_some(),
            "`{name}`'s {addr_var} is `{addr}`; it must be 0.0.0.0:<port> to be reachable from other containers"
        );
    }
    let worker = environment(service(&compose, "worker"));
    for var in ["CONVEYOR_PAYMENT_URL", "CONVEYOR_ANALYTICS_URL"] {
        let url = worker.get(var).map(String::as_str).unwrap_or_default();
        assert!(
            url.starts_with("http://sandbox:"),
            "the worker's {var} is `{url}`, not the sandbox service"
        );
    }
}

#[test]
fn app_healthchecks_run_the_services_own_binary() {
    let compose = compose();
    for (name, _) in APP_SERVICES {
        let service = service(&compose, name);
        let binary = format!("conveyor-{name}");
        let command = words(service.get("command"));
        assert_eq!(
            command.first(),
            Some(&binary),
            "`{name}` should run `{binary}`, but its command is {command:?}"
        );
        let test = words(
            service
                .get("healthcheck")
                .and_then(|healthcheck| healthcheck.get("test")),
        );
        assert!(
            test.contains(&binary) && test.iter().any(|word| word == "healthcheck"),
            "`{name}`'s healthcheck should be `{binary} healthcheck`, but it is {test:?}"
        );
    }
}

#[test]
fn the_dockerfile_builds_every_binary_compose_runs() {
    let compose = compose();
    let (path, dockerfile) = workspace_file("Dockerfile");
    // Only instructions count: a binary named in a comment is not built.
    let instructions: Vec<&str> = dockerfile
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect();
    for (name, _) in APP_SERVICES {
        let service = service(&compose, name);
        let test = words(
            service
                .get("healthcheck")
                .and_then(|healthcheck| healthcheck.get("test")),
        );
        let binaries = words(service.get("command"))
            .into_iter()
            .take(1)
            .chain(test.into_iter().filter(|w| w.starts_with("conveyor-")));
        for binary in binaries {
            assert!(
                instructions
                    .iter()
                    .any(|line| line.contains(binary.as_str())),
                "`{name}` runs `{binary}`, which {} never builds or installs",
                path.display()
            );
        }
    }
}

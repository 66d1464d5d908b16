//! Where and how to connect to one Redis: address, TLS and credentials, and the `redis` crate
//! client built from them (used by the operator's probes and the rebalance Job).
//!
//! Credentials are held in [`SecretString`], whose `Debug` and `Display` never show the value,
//! so a stray `{:?}` in a log line cannot leak a password.

use std::fmt;
use std::time::Duration;

use redis::{
    AsyncConnectionConfig, Client, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    RedisConnectionInfo, TlsCertificates,
};

/// A credential. `Debug`/`Display` print `***`.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value; call only where it is handed to Redis.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// TLS settings with the CA already read from its Secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct TlsOptions {
    /// PEM CA bundle; `None` trusts the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// Accept any certificate (testing only).
    pub insecure_skip_verify: bool,
}

/// ACL user and password, already read from their Secrets.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Credentials {
    /// ACL user; `None` is the `default` user.
    pub username: Option<String>,
    /// Password; `None` sends no AUTH.
    pub password: Option<SecretString>,
}

/// Everything needed to open a connection to one Redis.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Host name or IP.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS; `None` is plain TCP.
    pub tls: Option<TlsOptions>,
    /// ACL user and password.
    pub credentials: Credentials,
}

impl Target {
    /// A plain-TCP target without credentials.
    pub fn plain(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            tls: None,
            credentials: Credentials::default(),
        }
    }

    /// `host:port`, for logs and status (never includes credentials).
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// A fingerprint of everything that requires a new connection when it changes
    /// (address, TLS, credentials). Used to drop cached connections on Secret rotation.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    fn connection_info(&self) -> redis::RedisResult<ConnectionInfo> {
        let addr = match &self.tls {
            None => ConnectionAddr::Tcp(self.host.clone(), self.port),
            Some(tls) => ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: tls.insecure_skip_verify,
                tls_params: None,
            },
        };
        let mut settings = RedisConnectionInfo::default().set_skip_set_lib_name();
        if let Some(user) = &self.credentials.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.credentials.password {
            settings = settings.set_password(password.expose());
        }
        Ok(addr.into_connection_info()?.set_redis_settings(settings))
    }

    /// A `redis` crate client for this target.
    pub fn client(&self) -> redis::RedisResult<Client> {
        let info = self.connection_info()?;
        match &self.tls {
            Some(TlsOptions {
                ca_pem: Some(ca), ..
            }) => Client::build_with_tls(
                info,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            ),
            _ => Client::open(info),
        }
    }

    /// Opens a multiplexed connection; `timeout` bounds both connecting and each response.
    pub async fn connect(
        &self,
        timeout: Duration,
    ) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout));
        self.client()?
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }
}

/// Replaces every occurrence of the target's credentials in `message`: error texts from
/// libraries are not trusted to leave them out.
pub fn redact(message: &str, credentials: &Credentials) -> String {
    let mut out = message.to_owned();
    if let Some(p) = &credentials.password
        && !p.expose().is_empty()
    {
        out = out.replace(p.expose(), "***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let creds = Credentials {
            username: Some("app".into()),
            password: Some(SecretString::new("hunter2")),
        };
        let target = Target {
            credentials: creds.clone(),
            ..Target::plain("redis", 6379)
        };
        assert!(!format!("{target:?}").contains("hunter2"));
        assert!(!format!("{}", creds.password.as_ref().unwrap()).contains("hunter2"));
        assert_eq!(redact("auth hunter2 failed", &creds), "auth *** failed");
        assert_eq!(target.address(), "redis:6379");
    }

    #[test]
    fn fingerprint_changes_with_credentials() {
        let a = Target::plain("redis", 6379);
        let mut b = a.clone();
        b.credentials.password = Some(SecretString::new("new"));
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}

//! Backslash meta-commands (`\dt`, `\format csv`, …): parsing them and the SQL they run.
//!
//! Listings read `information_schema` (every user may read it, and sees only the tables they
//! may use) and `system.users` (`dba` and above).

use crate::output::Format;

/// A parsed meta-command.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Meta {
    /// `\q`
    Quit,
    /// `\?`
    Help,
    /// A listing, as the SQL that produces it.
    Query(String),
    /// `\format [FORMAT]`: show or set the output format.
    Format(Option<Format>),
    /// `\o [FILE]`: results to FILE, or back to stdout.
    Output(Option<String>),
    /// `\subscribe SELECT …`: a live query.
    Subscribe(String),
}

/// The help text of `\?`.
pub(crate) const HELP: &str = "\
Meta-commands:
  \\dn                 list namespaces
  \\dt [NAMESPACE]     list tables
  \\d [NS.]TABLE       describe a table's columns
  \\du                 list users (dba and above)
  \\format [FORMAT]    show or set the output format: table, csv, json, ndjson, ipc, parquet
  \\o [FILE]           write results to FILE (ipc and parquet need one); \\o alone: stdout
  \\subscribe SELECT … run a live query
  \\?                  this help
  \\q                  quit (or Ctrl-D)
SQL statements end with ';' and may span lines. Ctrl-C cancels a running query.";

/// Parses a line starting with `\`.
pub(crate) fn parse(line: &str) -> Result<Meta, String> {
    let line = line.trim().trim_end_matches(';').trim_end();
    let (command, arg) = match line.split_once(char::is_whitespace) {
        Some((command, arg)) => (command, Some(arg.trim()).filter(|a| !a.is_empty())),
        None => (line, None),
    };
    let no_arg = |meta: Meta| match arg {
        None => Ok(meta),
        Some(_) => Err(format!("{command} takes no argument")),
    };
    match command {
        "\\q" | "\\quit" => no_arg(Meta::Quit),
        "\\?" | "\\h" | "\\help" => no_arg(Meta::Help),
        "\\dn" => no_arg(Meta::Query(
            "SELECT schema_name AS namespace FROM information_schema.schemata \
             WHERE schema_name <> 'information_schema' ORDER BY schema_name"
                .into(),
        )),
        "\\dt" => {
            let filter = match arg {
                Some(ns) => format!("table_schema = {}", literal(ns)),
                None => "table_schema NOT IN ('information_schema', 'system')".into(),
            };
            Ok(Meta::Query(format!(
                "SELECT table_schema AS namespace, table_name AS name, table_type AS type \
                 FROM information_schema.tables WHERE {filter} \
                 ORDER BY table_schema, table_name"
            )))
        }
        "\\d" => {
            let table = arg.ok_or("usage: \\d [NAMESPACE.]TABLE")?;
            let filter = match table.rsplit_once('.') {
                Some((ns, name)) => {
                    format!(
                        "table_schema = {} AND table_name = {}",
                        literal(ns),
                        literal(name)
                    )
                }
                None => format!("table_name = {}", literal(table)),
            };
            Ok(Meta::Query(format!(
                "SELECT column_name AS column, data_type AS type, is_nullable AS nullable \
                 FROM information_schema.columns WHERE {filter} \
                 ORDER BY table_schema, table_name, ordinal_position"
            )))
        }
        "\\du" => no_arg(Meta::Query(
            "SELECT name, role, created_at FROM system.users ORDER BY name".into(),
        )),
        "\\format" | "\\f" => match arg {
            None => Ok(Meta::Format(None)),
            Some(name) => {
                let format = <Format as clap::ValueEnum>::from_str(name, true).map_err(|_| {
                    format!("unknown format '{name}'; use table, csv, json, ndjson, ipc or parquet")
                })?;
                Ok(Meta::Format(Some(format)))
            }
        },
        "\\o" | "\\out" => Ok(Meta::Output(arg.map(str::to_owned))),
        "\\subscribe" => {
            let sql = arg.ok_or("usage: \\subscribe SELECT …")?;
            Ok(Meta::Subscribe(sql.to_owned()))
        }
        _ => Err(format!("unknown command {command}; \\? lists the commands")),
    }
}

/// `text` as an SQL string literal.
fn literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_their_arguments() {
        assert_eq!(parse("\\q"), Ok(Meta::Quit));
        assert_eq!(
            parse(" \\format  CSV ;"),
            Ok(Meta::Format(Some(Format::Csv)))
        );
        assert_eq!(parse("\\format arrow"), Ok(Meta::Format(Some(Format::Ipc))));
        assert_eq!(
            parse("\\o out.csv"),
            Ok(Meta::Output(Some("out.csv".into())))
        );
        assert_eq!(parse("\\o"), Ok(Meta::Output(None)));
        assert_eq!(
            parse("\\subscribe SELECT * FROM app.m"),
            Ok(Meta::Subscribe("SELECT * FROM app.m".into()))
        );
        let Ok(Meta::Query(sql)) = parse("\\d app.it's") else {
            panic!("\\d parses");
        };
        assert!(
            sql.contains("table_schema = 'app' AND table_name = 'it''s'"),
            "{sql}"
        );
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(parse("\\x").unwrap_err().contains("unknown command \\x"));
        assert!(
            parse("\\format xml")
                .unwrap_err()
                .contains("unknown format")
        );
        assert!(parse("\\q now").is_err());
        assert!(parse("\\d").unwrap_err().starts_with("usage"));
        assert!(parse("\\subscribe").unwrap_err().starts_with("usage"));
    }
}

// PgJDBC client for pgsansio's traffic corpus (scripts/corpus/scenarios_drivers.py).
//
// Run as a single-file program, no build tool needed:
//   java -cp postgresql-42.7.13.jar PgjdbcScenario.java HOST PORT DBNAME USER PASSWORD SSLMODE MODE
// PASSWORD may be "-" for none. MODE is one of: prepared, transaction, batch.
// Each mode opens exactly one connection, does a fixed amount of work and prints
// one line per result so that the caller can check what happened.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public class PgjdbcScenario {
    public static void main(String[] args) throws Exception {
        if (args.length != 7) {
            System.err.println(
                    "usage: PgjdbcScenario HOST PORT DBNAME USER PASSWORD SSLMODE MODE");
            System.exit(2);
        }
        String url = "jdbc:postgresql://" + args[0] + ":" + args[1] + "/" + args[2];
        Properties props = new Properties();
        props.setProperty("user", args[3]);
        if (!args[4].equals("-")) {
            props.setProperty("password", args[4]);
        }
        props.setProperty("sslmode", args[5]);
        props.setProperty("ApplicationName", "pgsansio-corpus-jdbc");
        // Spelled out although they are the driver's defaults, so the recorded
        // flow does not change if a later driver changes them.
        props.setProperty("prepareThreshold", "5");
        props.setProperty("reWriteBatchedInserts", "false");
        props.setProperty("tcpKeepAlive", "false");
        String mode = args[6];
        try (Connection conn = DriverManager.getConnection(url, props)) {
            switch (mode) {
                case "prepared" -> prepared(conn);
                case "transaction" -> transaction(conn);
                case "batch" -> batch(conn);
                default -> {
                    System.err.println("unknown mode " + mode);
                    System.exit(2);
                }
            }
        }
    }

    // The same PreparedStatement executed 7 times: the first 4 executions use the
    // unnamed statement, from the 5th on (prepareThreshold) the driver parses a
    // named server-side statement "S_1" once and then only sends Bind/Execute.
    static void prepared(Connection conn) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement("SELECT ?::int * 2 AS doubled, ?::text AS label")) {
            for (int i = 1; i <= 7; i++) {
                ps.setInt(1, i);
                ps.setString(2, "run-" + i);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) {
                        System.out.println("prepared " + rs.getInt(1) + " " + rs.getString(2));
                    }
                }
            }
        }
    }

    // setAutoCommit(false): the driver sends "BEGIN" as a Query pipelined in front of
    // the first extended-protocol statement of each transaction. One transaction
    // commits, a second one is rolled back.
    static void transaction(Connection conn) throws SQLException {
        conn.setAutoCommit(false);
        try (PreparedStatement ins = conn.prepareStatement(
                "INSERT INTO corpus_jdbc_tx (id, note) VALUES (?, ?)")) {
            for (int i = 1; i <= 3; i++) {
                ins.setInt(1, i);
                ins.setString(2, "kept-" + i);
                ins.executeUpdate();
            }
        }
        conn.commit();
        try (Statement st = conn.createStatement()) {
            st.executeUpdate("INSERT INTO corpus_jdbc_tx (id, note) VALUES (99, 'rolled back')");
        }
        conn.rollback();
        try (Statement st = conn.createStatement();
                ResultSet rs = st.executeQuery("SELECT count(*) FROM corpus_jdbc_tx")) {
            rs.next();
            System.out.println("count " + rs.getInt(1));
        }
        conn.commit();
    }

    // executeBatch of a PreparedStatement: many Bind/Execute pairs before one Sync.
    static void batch(Connection conn) throws SQLException {
        try (PreparedStatement ps = conn.prepareStatement(
                "INSERT INTO corpus_jdbc_batch (id, note) VALUES (?, ?)")) {
            for (int i = 1; i <= 10; i++) {
                ps.setInt(1, i);
                ps.setString(2, "row-" + i);
                ps.addBatch();
            }
            int[] counts = ps.executeBatch();
            int total = 0;
            for (int c : counts) {
                total += c;
            }
            System.out.println("batch " + counts.length + " " + total);
        }
        try (Statement st = conn.createStatement()) {
            st.addBatch("UPDATE corpus_jdbc_batch SET note = 'even' WHERE id % 2 = 0");
            st.addBatch("DELETE FROM corpus_jdbc_batch WHERE id > 8");
            int[] counts = st.executeBatch();
            System.out.println("statements " + counts[0] + " " + counts[1]);
        }
        try (Statement st = conn.createStatement();
                ResultSet rs = st.executeQuery("SELECT count(*) FROM corpus_jdbc_batch")) {
            rs.next();
            System.out.println("count " + rs.getInt(1));
        }
    }
}

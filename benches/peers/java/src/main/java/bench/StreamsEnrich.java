package bench;

import java.io.IOException;
import java.nio.file.Files;
import java.time.Duration;
import java.util.Properties;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.Produced;

/**
 * The Kafka Streams peer: {@code stream(in).mapValues(enrich).to(out)}, two
 * stream threads, at-least-once, the enrich function of
 * customer-examples/enrich_event written with Jackson. The producer gets
 * linger.ms=5 like the worker's (Streams' own default is 100), idempotent,
 * acks=all. Key and headers pass through. Runs until SIGTERM/SIGKILL.
 *
 * <p>usage: bench.StreamsEnrich BROKERS INPUT OUTPUT APPLICATION_ID
 */
public final class StreamsEnrich {
  private static final ObjectMapper JSON = new ObjectMapper();

  /** customer-examples/enrich_event/enrich_event.py, in Java. */
  static byte[] enrich(byte[] value) {
    try {
      ObjectNode o = (ObjectNode) JSON.readTree(value);
      double minutes =
          (o.required("session_end").asDouble() - o.required("session_start").asDouble()) / 60.0;
      o.put("session_duration_minutes", minutes);
      o.put("engagement_tier", minutes > 30 ? "high" : "standard");
      return JSON.writeValueAsBytes(o);
    } catch (IOException e) {
      throw new IllegalArgumentException("not a JSON object: " + e.getMessage(), e);
    }
  }

  public static void main(String[] args) throws IOException {
    if (args.length != 4) {
      System.err.println("usage: bench.StreamsEnrich BROKERS INPUT OUTPUT APPLICATION_ID");
      System.exit(2);
    }
    String brokers = args[0], input = args[1], output = args[2], appId = args[3];

    Properties p = new Properties();
    p.put(StreamsConfig.APPLICATION_ID_CONFIG, appId);
    p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, 2);
    p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, StreamsConfig.AT_LEAST_ONCE);
    p.put(StreamsConfig.STATE_DIR_CONFIG, Files.createTempDirectory("bench-streams").toString());
    p.put(StreamsConfig.consumerPrefix(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG), "earliest");
    p.put(StreamsConfig.producerPrefix(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG), "true");
    p.put(StreamsConfig.producerPrefix(ProducerConfig.ACKS_CONFIG), "all");
    p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), "5");

    StreamsBuilder b = new StreamsBuilder();
    b.stream(input, Consumed.with(Serdes.ByteArray(), Serdes.ByteArray()))
        .mapValues(StreamsEnrich::enrich)
        .to(output, Produced.with(Serdes.ByteArray(), Serdes.ByteArray()));

    KafkaStreams streams = new KafkaStreams(b.build(), p);
    streams.setUncaughtExceptionHandler(
        e -> {
          e.printStackTrace();
          Runtime.getRuntime().halt(1);
          return null;
        });
    Runtime.getRuntime().addShutdownHook(new Thread(() -> streams.close(Duration.ofSeconds(10))));
    streams.start();
  }
}

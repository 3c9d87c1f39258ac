package bench;

import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * The plain Java peer: a KafkaConsumer poll loop handing every record, bytes
 * unchanged (key, value, headers), to an idempotent KafkaProducer (acks=all,
 * linger.ms=5 like the worker's producer). Runs until SIGTERM/SIGKILL.
 *
 * <p>usage: bench.Passthrough BROKERS INPUT OUTPUT GROUP
 */
public final class Passthrough {
  public static void main(String[] args) {
    if (args.length != 4) {
      System.err.println("usage: bench.Passthrough BROKERS INPUT OUTPUT GROUP");
      System.exit(2);
    }
    String brokers = args[0], input = args[1], output = args[2], group = args[3];

    Properties c = new Properties();
    c.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    c.put(ConsumerConfig.GROUP_ID_CONFIG, group);
    c.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
    c.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
    c.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());

    Properties p = new Properties();
    p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, brokers);
    p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, "true");
    p.put(ProducerConfig.ACKS_CONFIG, "all");
    p.put(ProducerConfig.LINGER_MS_CONFIG, "5");
    p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
    p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());

    AtomicReference<Exception> failed = new AtomicReference<>();
    KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(c);
    KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p);
    Thread main = Thread.currentThread();
    Runtime.getRuntime()
        .addShutdownHook(
            new Thread(
                () -> {
                  consumer.wakeup();
                  try {
                    main.join(10_000);
                  } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                  }
                }));
    consumer.subscribe(List.of(input));
    try {
      while (failed.get() == null) {
        ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofMillis(100));
        for (ConsumerRecord<byte[], byte[]> r : records) {
          producer.send(
              new ProducerRecord<>(output, null, r.key(), r.value(), r.headers()),
              (md, e) -> {
                if (e != null) failed.compareAndSet(null, e);
              });
        }
      }
    } catch (WakeupException e) {
      // shutdown
    } finally {
      producer.close(Duration.ofSeconds(10));
      consumer.close();
    }
    if (failed.get() != null) {
      failed.get().printStackTrace();
      System.exit(1);
    }
  }
}

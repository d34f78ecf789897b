import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('sessions_admin', '0017_feedback_and_forward_outbox'),
    ]

    operations = [
        migrations.CreateModel(
            name='PrunedUsageDay',
            fields=[
                ('day', models.DateField(primary_key=True, serialize=False)),
                ('replies_deleted', models.PositiveBigIntegerField(default=0)),
                ('last_deleted_at', models.DateTimeField(default=django.utils.timezone.now)),
            ],
            options={
                'ordering': ['-day'],
            },
        ),
    ]
